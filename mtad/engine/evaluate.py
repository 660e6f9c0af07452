"""Evaluation: run the model over a test split, sharded over processes, and score it."""
from __future__ import annotations

import logging
from itertools import zip_longest

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mtad.engine import distributed as dist
from mtad.metrics import Evaluator
from mtad.postprocess import resize_map

log = logging.getLogger(__name__)


def sharded_batches(n: int, batch_size: int) -> list[list[int]]:
    """This process's batches: whole batches dealt round-robin, so that every
    batch has the same contents as in a single-process run."""
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return batches[dist.rank()::dist.world_size()]


def pick_examples(dataset, count: int) -> list[int]:
    """Test images worth showing: anomalies, round-robin over classes, and a few normals."""
    by_class: dict[str, tuple[list[int], list[int]]] = {}
    for i, (label, name) in enumerate(zip(dataset.labels, dataset.item_classes)):
        by_class.setdefault(name, ([], []))[int(label)].append(i)
    anomalies = [i for row in zip_longest(*(a for _, a in by_class.values()))
                 for i in row if i is not None]
    normals = [n[0] for n, _ in by_class.values() if n]
    n_normal = min(len(normals), max(1, count // 4)) if count > 1 else 0
    chosen = anomalies[:count - n_normal]
    chosen += normals[:count - len(chosen)]
    return sorted(chosen)


@torch.no_grad()
def evaluate(model, dataset, cfg, device: torch.device, examples: int = 0,
             progress: bool = True) -> dict:
    """Metrics per class and their mean, F1-optimal thresholds (per class and pooled);
    with `examples`, also that many maps to show.

    Pixel metrics are computed at the size of the dataset's ``gt_mask``, its
    ``mask_size`` (the run's ``eval.mask_size`` when the split was opened by the engine): each anomaly map is
    upsampled to it with `mtad.postprocess.resize_map`, whatever the model's input
    size. Batch size, workers, amp and streaming come from the run config `cfg`
    (``data.test_batch_size``, ``data.num_workers``, ``train.amp``, ``eval.*``).

    Every process scores its shard; the evaluators are gathered to rank 0
    through torch.distributed and merged there, and the result broadcast back.
    The model's train/eval mode is restored on return.
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, num_workers=cfg.data.num_workers,
                        batch_sampler=sharded_batches(len(dataset), cfg.data.test_batch_size))
    evaluator = Evaluator(streaming=cfg.eval.streaming, bins=cfg.eval.bins)
    wanted = set(pick_examples(dataset, examples))
    shown, emptied = {}, 0
    no_masks = set(getattr(dataset, "classes_without_masks", ()))
    batches = tqdm(loader, desc="evaluate", leave=False, disable=not (progress and dist.is_main()))
    try:
        for indices, batch in zip(loader.batch_sampler, batches):
            with dist.autocast(device, cfg.train.amp):
                pred = model.predict(batch["image"].to(device, non_blocking=True))
            gt_mask = batch["gt_mask"][:, 0].numpy() > 0.5
            maps = resize_map(pred.anomaly_map[:, 0].float().cpu().numpy(), gt_mask.shape[-2:])
            scores = pred.pred_score.float().cpu().numpy()
            labels = batch["gt_label"].numpy()
            names = list(batch["class_name"])
            px = np.array([n not in no_masks for n in names])
            if px.any():
                emptied += int(((labels[px] == 1) & ~gt_mask[px].any(axis=(1, 2))).sum())
                evaluator.update([n for n, k in zip(names, px) if k], labels[px], scores[px],
                                 gt_mask[px], maps[px])
            if not px.all():  # a class without ground truth: image metrics only, pixel n/a
                evaluator.update([n for n, k in zip(names, px) if not k], labels[~px],
                                 scores[~px])
            for row, index in enumerate(indices):
                if index in wanted:
                    shown[index] = {"anomaly_map": maps[row].astype(np.float16),
                                    "pred_score": float(scores[row])}
    finally:
        model.train(was_training)
    parts = dist.gather_to_main((evaluator, shown, emptied))
    results = None
    if dist.is_main():
        merged, shown, emptied = parts[0][0], dict(parts[0][1]), parts[0][2]
        for other, other_shown, other_emptied in parts[1:]:
            merged.merge(other)
            shown.update(other_shown)
            emptied += other_emptied
        results = merged.compute()
        for name in sorted(no_masks & set(results["classes"])):
            results["notes"][name] = results["notes"].get(name, "").replace(
                "no anomaly maps / masks given", "defective images without ground-truth masks")
        results["examples"] = shown
        results["image_scores"] = merged.image_scores()
        size = dataset.mask_size
        results["protocol"] = {"mask_size": size, "image_size": dataset.image_size,
                               "mask_resize": "bilinear, then > mask_threshold",
                               "map_resize": "bilinear (align_corners=False)",
                               "anomalous_with_empty_mask": emptied}
        if emptied:
            note = (f"{emptied} defective test image(s) have no defect pixel left in their ground "
                    f"truth at {size} px; they count for image metrics only")
            results.setdefault("notes", {})["all"] = note
            log.warning(note)
    return dist.broadcast_from_main(results)

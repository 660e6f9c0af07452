"""Evaluation: run the model over a test split, sharded over processes, and score it."""
from __future__ import annotations

from itertools import zip_longest

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mtad.engine import distributed as dist
from mtad.metrics import Evaluator


def autocast(device: torch.device, amp: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


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
def evaluate(model, dataset, device: torch.device, batch_size: int = 8, num_workers: int = 0,
             amp: str = "none", streaming: bool = False, bins: int = 4096,
             examples: int = 0, progress: bool = True) -> dict:
    """Metrics per class and their mean; with `examples`, also a few maps to show.

    Every process scores its shard; the evaluators are gathered to rank 0
    through torch.distributed and merged there, and the result broadcast back.
    """
    model.eval()
    loader = DataLoader(dataset, batch_sampler=sharded_batches(len(dataset), batch_size),
                        num_workers=num_workers)
    evaluator = Evaluator(streaming=streaming, bins=bins)
    wanted = set(pick_examples(dataset, examples))
    shown = {}
    batches = tqdm(loader, desc="evaluate", leave=False, disable=not (progress and dist.is_main()))
    for indices, batch in zip(loader.batch_sampler, batches):
        with autocast(device, amp):
            pred = model.predict(batch["image"].to(device, non_blocking=True))
        maps = pred.anomaly_map[:, 0].float().cpu()
        scores = pred.pred_score.float().cpu()
        evaluator.update(list(batch["class_name"]), batch["gt_label"], scores,
                         batch["gt_mask"][:, 0], maps)
        for row, index in enumerate(indices):
            if index in wanted:
                shown[index] = {"map": maps[row].half(), "score": float(scores[row])}
    parts = dist.gather_to_main((evaluator, shown))
    results = None
    if dist.is_main():
        merged, shown = parts[0][0], dict(parts[0][1])
        for other, other_shown in parts[1:]:
            merged.merge(other)
            shown.update(other_shown)
        results = merged.compute()
        results["examples"] = shown
    results = dist.broadcast_from_main(results)
    model.train()
    return results

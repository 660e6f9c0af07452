"""Export a trained run to ONNX or OpenVINO, and prove the export computes what torch does.

    export_model("runs/x", "onnx", out="runs/x/export-onnx", batch="dynamic")

writes, into ``out`` (default ``<run>/export-<format>``):

- ``model.onnx`` (onnx) or ``model.xml`` + ``model.bin`` (openvino, fp32 weights):
  one graph, input ``images`` B x 3 x S x S float32 RGB in [0, 1] (ImageNet
  normalisation inside), outputs ``anomaly_map`` B x 1 x S x S (upsampled and
  Gaussian-smoothed as ``MTAD.predict``) and ``pred_score`` B (each map's
  maximum). Standard operators, opset 17; the selective scan is
  `mtad.ops.scan_export`.
- ``metadata.json``: input contract, thresholds (the run's whole dict), class
  names, mtad version, the checkpoint's SHA-256, the run's results and history,
  and the parity figures measured at export (see `check_parity`).

An export checks itself before it reports success: the torch model and the
exported one score the same images (a few test images of the run when its data
is reachable, else deterministic synthetic ones); the largest map difference
must stay within ``MAP_TOLERANCE`` of the torch maps' range and every score
within ``SCORE_TOLERANCE`` relative. Everything is written into a temporary
folder beside ``out`` and renamed into place only after that check, so a
failed export leaves no folder that looks valid.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from mtad.deploy import MODEL_FILES, DeployError

FORMATS = ("onnx", "openvino")
OPSET = 17
MAP_TOLERANCE = 1e-4      # of the torch maps' range (max - min)
SCORE_TOLERANCE = 1e-4    # relative
PARITY_IMAGES = 4         # batch 1 then batch 3 through a dynamic export


def parse_batch(value) -> int | None:
    """``--batch``: "dynamic" (None) or a positive integer."""
    if value is None or str(value).strip().lower() == "dynamic":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(n) != str(value).strip():
        raise DeployError(f"--batch must be a positive integer or 'dynamic', got {value!r}")
    return n


EXPORTERS = ("torchscript", "dynamo")
EXPORTER_ENV = "MTAD_ONNX_EXPORTER"


def _torch_export_onnx(net, size: int, batch: int | None, path: Path) -> str:
    """Trace ``net`` into ``path``; returns the exporter used.

    The TorchScript-based exporter (the default) traces MTAD in seconds; the dynamo
    exporter (torch.export) needs minutes for the unrolled scan (benchmarks/README.md).
    ``MTAD_ONNX_EXPORTER=dynamo`` selects the latter (needs onnxscript), for torch
    versions without the former.
    """
    import torch

    exporter = os.environ.get(EXPORTER_ENV, "torchscript").strip().lower() or "torchscript"
    if exporter not in EXPORTERS:
        raise DeployError(f"{EXPORTER_ENV}={exporter!r}: valid values are {', '.join(EXPORTERS)}")
    # batch 2 when dynamic: a trace at batch 1 may fold the batch axis into constants
    x = torch.rand(batch or 2, 3, size, size, generator=torch.Generator().manual_seed(0))
    names = dict(input_names=["images"], output_names=["anomaly_map", "pred_score"])
    if exporter == "torchscript":
        dynamic = None if batch else {"images": {0: "batch"}, "anomaly_map": {0: "batch"},
                                      "pred_score": {0: "batch"}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # tracer warnings about shape arithmetic
            torch.onnx.export(net, (x,), str(path), opset_version=OPSET, dynamo=False,
                              dynamic_axes=dynamic, do_constant_folding=True, **names)
        return exporter
    dyn = None if batch else {"images": {0: torch.export.Dim("batch", min=1, max=4096)}}
    program = torch.onnx.export(net, (x,), None, opset_version=max(OPSET, 18), dynamo=True,
                                dynamic_shapes=dyn, external_data=False, verbose=False, **names)
    program.save(str(path), external_data=False)
    return exporter


def _onnx_check(path: Path) -> dict:
    """Operator inventory of the saved graph; refuses anything outside the standard domain."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(str(path))
    domains = {n.domain for n in model.graph.node} - {"", "ai.onnx"}
    if domains:
        raise DeployError(f"{path.name}: the graph uses non-standard operator domains {sorted(domains)}")
    ops = sorted({n.op_type for n in model.graph.node})
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {"opset": int(opset), "nodes": len(model.graph.node), "operators": ops}


def _save_openvino(onnx_path: Path, folder: Path) -> None:
    from mtad.deploy.inferencer import import_openvino

    ov = import_openvino()    # without telemetry
    model = ov.Core().read_model(str(onnx_path))
    # fp32 weights on disk: save_model compresses to FP16 unless told not to
    ov.save_model(model, str(folder / MODEL_FILES["openvino"]), compress_to_fp16=False)


def parity_images(run, n: int = PARITY_IMAGES, log=print) -> tuple[np.ndarray, str]:
    """n x 3 x S x S float32 RGB in [0, 1]: test images of the run (spread over
    classes, normal and anomalous) when its data is reachable, else
    deterministic synthetic images. Returns (images, where they came from)."""
    size = int(run.config.data.image_size)
    try:
        from mtad.data.dataset import open_split
        from mtad.data.imageio import read_rgb
        from mtad.data.transforms import resize_rgb, to_unit_float

        if not run.config.data.root:
            raise FileNotFoundError("the run config names no data.root")
        ds = open_split(run.config.data, "test")
        picks, seen = [], set()
        for r in ds.records:                       # first one per (class, label), then the rest
            if (r.class_name, r.label) not in seen:
                seen.add((r.class_name, r.label))
                picks.append(r)
        picks += [r for r in ds.records if r not in picks]
        images = [resize_rgb(read_rgb(r.image_path), size) for r in picks[:n]]
        images += [images[i % len(images)][::-1].copy() for i in range(n - len(images))]
        x = to_unit_float(np.stack(images))
        return np.ascontiguousarray(x), f"{len(picks[:n])} test images of {ds.root}"
    except Exception as exc:  # unreachable data is normal for a copied run: say so, go on
        log(f"parity: the run's test images are not reachable ({type(exc).__name__}: {exc}); "
            "using synthetic images")
    rng = np.random.default_rng(0)
    # smooth random colour fields plus a bright square: maps with structure, not noise
    base = rng.random((n, 3, 8, 8)).astype(np.float32)
    x = np.repeat(np.repeat(base, -(-size // 8), axis=2), -(-size // 8), axis=3)[:, :, :size, :size]
    x = 0.15 + 0.7 * x
    for i in range(n):
        y0, x0 = rng.integers(0, max(1, size - size // 4), size=2)
        x[i, :, y0:y0 + size // 6, x0:x0 + size // 6] = 1.0
    return np.ascontiguousarray(x, dtype=np.float32), f"{n} synthetic images (seed 0)"


def _batches(n: int, batch: int | None) -> list[slice]:
    if batch is None:   # batch 1, then the rest at once: both shapes through one file
        return [slice(0, 1)] + ([slice(1, n)] if n > 1 else [])
    return [slice(s, min(n, s + batch)) for s in range(0, n, batch)]


def check_parity(torch_net, exported, images: np.ndarray, batch: int | None) -> dict:
    """Run both models on ``images`` (batches as the export takes them) and compare.

    Returns the figures stored in metadata.json: ``max_map_diff`` (absolute),
    ``map_range`` (torch maps' max - min), ``map_diff_of_range``, ``max_score_rel_diff``,
    the tolerances, the batch sizes used and ``passed``.
    """
    import torch

    maps_t, scores_t, maps_e, scores_e, sizes = [], [], [], [], []
    for sl in _batches(len(images), batch):
        x = images[sl]
        if batch is not None and len(x) < batch:   # a fixed-batch export takes exactly `batch`
            x = np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)])
        with torch.no_grad():
            m, s = torch_net(torch.from_numpy(x))
        em, es = exported.predict(x)
        k = sl.stop - sl.start
        maps_t.append(m.numpy()[:k]), scores_t.append(s.numpy()[:k])
        maps_e.append(em[:k]), scores_e.append(es[:k])
        sizes.append(int(len(x)))
    mt, me = np.concatenate(maps_t), np.concatenate(maps_e)
    st, se = np.concatenate(scores_t), np.concatenate(scores_e)
    if me.shape != mt.shape or se.shape != st.shape:
        return {"passed": False, "reason": f"output shapes differ: torch {mt.shape}/{st.shape}, "
                f"export {me.shape}/{se.shape}"}
    map_range = float(mt.max() - mt.min())
    diff = float(np.abs(me.astype(np.float64) - mt).max())
    rel = diff / map_range if map_range > 0 else (0.0 if diff == 0 else float("inf"))
    score_rel = float((np.abs(se.astype(np.float64) - st) / np.maximum(np.abs(st), 1e-12)).max())
    finite = bool(np.isfinite(me).all() and np.isfinite(se).all())
    return {"images": int(len(images)), "batch_sizes": sizes, "max_map_diff": diff,
            "map_range": map_range, "map_diff_of_range": rel, "max_score_rel_diff": score_rel,
            "map_tolerance_of_range": MAP_TOLERANCE, "score_tolerance_rel": SCORE_TOLERANCE,
            "passed": finite and rel <= MAP_TOLERANCE and score_rel <= SCORE_TOLERANCE}


def _out_dir(run, fmt: str, out) -> Path:
    out = Path(out) if out is not None else run.run_dir / f"export-{fmt}"
    if out.exists() and not (out.is_dir() and ((out / "metadata.json").is_file()
                                               or not any(out.iterdir()))):
        raise FileExistsError(f"{out} exists and is not an mtad export; choose another --out")
    return out


def export_model(run_path, fmt: str = "onnx", out=None, batch="dynamic", *, n_images=PARITY_IMAGES,
                 log=print) -> dict:
    """Export the run named by ``run_path`` (run folder or its last.pt) and check it.

    Args:
        fmt: "onnx" or "openvino".
        out: destination folder (default ``<run>/export-<fmt>``); an earlier export
            there is replaced, any other existing content is refused.
        batch: "dynamic" (or None) for any batch size, or a fixed positive integer.
        n_images: images for the parity check.

    Returns the metadata written to metadata.json (with ``"path"``: the export folder).

    Raises:
        CheckpointError: not a readable run.
        DeployError: unknown format or batch, a graph outside the standard operators,
            or a parity check that fails (the message gives the figures).
        FileExistsError: ``out`` holds something other than an mtad export.
    """
    if fmt not in FORMATS:
        raise DeployError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    batch = parse_batch(batch)
    import torch

    import mtad
    from mtad.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from mtad.deploy.inferencer import ExportedModel
    from mtad.deploy.torch_model import Normalised
    from mtad.engine.checkpoint import load_run
    from mtad.ops import scan_export

    run = load_run(run_path, "cpu")
    out = _out_dir(run, fmt, out)
    size = int(run.config.data.image_size)
    net = Normalised(run.model).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)     # mkdtemp's 0700 would stay on the renamed folder
    try:
        t0 = time.perf_counter()
        onnx_path = tmp / MODEL_FILES["onnx"]
        with torch.no_grad():
            exporter = _torch_export_onnx(net, size, batch, onnx_path)
        graph = _onnx_check(onnx_path)
        if fmt == "openvino":
            _save_openvino(onnx_path, tmp)
            onnx_path.unlink()
        export_s = time.perf_counter() - t0
        files = [f.name for f in sorted(tmp.iterdir())]
        meta = {
            "format": fmt,
            "model_files": files,
            "mtad_version": mtad.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "input": {"name": "images", "shape": [batch or "batch", 3, size, size],
                      "batch": batch or "dynamic", "image_size": size, "layout": "NCHW",
                      "dtype": "float32", "channel_order": "RGB", "value_range": [0.0, 1.0],
                      "normalisation": {"kind": "imagenet", "inside_graph": True,
                                        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                      "resize": "PIL bilinear to image_size x image_size "
                                "(mtad.data.transforms.resize_rgb)"},
            "outputs": {"anomaly_map": [batch or "batch", 1, size, size],
                        "pred_score": [batch or "batch"]},
            "precision": "fp32",
            "graph": {**graph, "exporter": exporter, "scan": scan_export.DEFAULT_METHOD},
            "class_names": list(run.class_names),
            "thresholds": run.thresholds,
            "source": {"checkpoint": str(run.checkpoint), "sha256": run.sha256(),
                       "epoch": run.epoch, "run_dir": str(run.run_dir)},
            "config": run.config.to_dict(),
            "results": run.results,
            "history": run.history,
            "export_seconds": round(export_s, 2),
        }
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2))
        images, origin = parity_images(run, n_images, log)
        figures = check_parity(net, ExportedModel(tmp), images, batch)
        figures["inputs"] = origin
        figures["runtime"] = "openvino" if fmt == "openvino" else "onnxruntime"
        meta["parity"] = figures
        log(_parity_line(figures))
        if not figures["passed"]:
            raise DeployError(f"export to {fmt} failed its parity check, nothing written to {out}: "
                              + _parity_line(figures))
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2))
        _carry_calibrations(run, out, tmp, log)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size_mb = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    log(f"exported {run.checkpoint} to {out} ({fmt}, batch {batch or 'dynamic'}, {size_mb:.1f} MB, "
        f"{export_s:.1f} s)")
    return {**meta, "path": str(out)}


def _parity_line(f: dict) -> str:
    if "max_map_diff" not in f:
        return f"parity: {f.get('reason')}"
    verdict = "ok" if f["passed"] else "FAILED"
    return (f"parity {verdict} on {f.get('inputs', f['images'])} (batches {f['batch_sizes']}): "
            f"max map difference {f['max_map_diff']:.3g} = {f['map_diff_of_range']:.2e} of the "
            f"map range {f['map_range']:.3g} (limit {f['map_tolerance_of_range']:g}); "
            f"max score difference {f['max_score_rel_diff']:.2e} relative "
            f"(limit {f['score_tolerance_rel']:g})")


def _carry_calibrations(run, out: Path, tmp: Path, log) -> None:
    """The new export keeps the calibrations of the export it replaces (versions for
    another checkpoint stay listed, never applied) and gets the run's active one,
    as a new active version unless it is already there."""
    from mtad.calibration import CALIBRATION_FILE, CalibrationStore

    if (out / CALIBRATION_FILE).is_file():
        shutil.copy2(out / CALIBRATION_FILE, tmp / CALIBRATION_FILE)
    if not (run.run_dir / CALIBRATION_FILE).is_file():
        return
    active = CalibrationStore(run.run_dir, run.sha256()).active()
    if active is None:
        return
    store = CalibrationStore(tmp, run.sha256())
    same = [t for t in store.versions()
            if t.created == active.created and t.checkpoint_sha256 == active.checkpoint_sha256]
    if same:
        store.activate(same[0].version)
        return
    added = store.add(active)
    log(f"carried the run's calibration v{active.version} into the export as v{added.version}")


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished export into place; an earlier export there is replaced."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

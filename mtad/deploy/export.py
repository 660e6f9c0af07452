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

``precision="int8"`` (both formats) or ``"fp16"`` (OpenVINO) writes a quantized
model instead (`mtad.deploy.quantize`: which operators, how, and why), into
``<run>/export-<format>-<precision>`` by default, and checks accuracy instead of
parity: metadata.json gains ``quantization`` and ``accuracy_check`` blocks, and its
``thresholds`` are re-calibrated for the quantized model (the run's stay in
``fp32_thresholds``).
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from mtad.files import partial_dir
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


def _torch_export_onnx(net, size: int, batch: int | None, path: Path, fused: bool = False) -> str:
    """Trace ``net`` into ``path``; returns the exporter used.

    The TorchScript-based exporter (the default) traces MTAD in seconds; the dynamo
    exporter (torch.export) needs minutes for the unrolled scan (benchmarks/README.md).
    ``MTAD_ONNX_EXPORTER=dynamo`` selects the latter (needs onnxscript), for torch
    versions without the former. ``fused``: each scan as one ``mtad.SelectiveScan`` node
    (`mtad.ops.scan_fused`; TorchScript exporter only).
    """
    import contextlib

    import torch

    from mtad.ops import scan_fused

    exporter = os.environ.get(EXPORTER_ENV, "torchscript").strip().lower() or "torchscript"
    if exporter not in EXPORTERS:
        raise DeployError(f"{EXPORTER_ENV}={exporter!r}: valid values are {', '.join(EXPORTERS)}")
    # batch 2 when dynamic: a trace at batch 1 may fold the batch axis into constants
    x = torch.rand(batch or 2, 3, size, size, generator=torch.Generator().manual_seed(0))
    names = dict(input_names=["images"], output_names=["anomaly_map", "pred_score"])
    if fused and exporter != "torchscript":
        raise DeployError(f"--fused-scan needs the TorchScript exporter ({EXPORTER_ENV}=torchscript)")
    if exporter == "torchscript":
        dynamic = None if batch else {"images": {0: "batch"}, "anomaly_map": {0: "batch"},
                                      "pred_score": {0: "batch"}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # tracer warnings about shape arithmetic
            with scan_fused.exporting() if fused else contextlib.nullcontext():
                torch.onnx.export(net, (x,), str(path), opset_version=OPSET, dynamo=False,
                                  dynamic_axes=dynamic, do_constant_folding=True,
                                  custom_opsets=scan_fused.OPSET if fused else None, **names)
        return exporter
    dyn = None if batch else {"images": {0: torch.export.Dim("batch", min=1, max=4096)}}
    program = torch.onnx.export(net, (x,), None, opset_version=max(OPSET, 18), dynamo=True,
                                dynamic_shapes=dyn, external_data=False, verbose=False, **names)
    program.save(str(path), external_data=False)
    return exporter


def _onnx_check(path: Path, fused: bool = False) -> dict:
    """Operator inventory of the saved graph; refuses anything outside the standard domain
    (and, with ``fused``, the fused scan's ``mtad`` domain)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(str(path))
    domains = {n.domain for n in model.graph.node} - {"", "ai.onnx"} - ({"mtad"} if fused else set())
    if domains:
        raise DeployError(f"{path.name}: the graph uses non-standard operator domains {sorted(domains)}")
    ops = sorted({n.op_type for n in model.graph.node})
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {"opset": int(opset), "nodes": len(model.graph.node), "operators": ops}


def _save_openvino(onnx_path: Path, folder: Path) -> None:
    from mtad.deploy import fused_scan
    from mtad.deploy.inferencer import import_openvino

    ov = import_openvino()    # without telemetry
    model = fused_scan.core(onnx_path).read_model(str(onnx_path))
    # fp32 weights on disk: save_model compresses to FP16 unless told not to
    ov.save_model(model, str(folder / MODEL_FILES["openvino"]), compress_to_fp16=False)


def parity_images(run, n: int = PARITY_IMAGES, log=print) -> tuple[np.ndarray, str]:
    """n x 3 x S x S float32 RGB in [0, 1]: test images of the run (spread over
    classes, normal and anomalous) when its data is reachable, else
    deterministic synthetic images. Returns (images, where they came from)."""
    size = int(run.config.data.image_size)
    try:
        from mtad.data.dataset import open_split
        from mtad.data.transforms import model_input

        if not run.config.data.root:
            raise FileNotFoundError("the run config names no data.root")
        ds = open_split(run.config.data, "test")
        picks, seen = [], set()
        for r in ds.records:                       # first one per (class, label), then the rest
            if (r.class_name, r.label) not in seen:
                seen.add((r.class_name, r.label))
                picks.append(r)
        picks += [r for r in ds.records if r not in picks]
        images = [model_input(r.image_path, size) for r in picks[:n]]
        images += [images[i % len(images)][:, ::-1] for i in range(n - len(images))]  # upside down
        return np.ascontiguousarray(np.stack(images)), f"{len(picks[:n])} test images of {ds.root}"
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
                 precision: str = "fp32", max_drop: float | None = None, quantize_images=None,
                 max_class_drop: float | None = None, max_reverted: int | None = None,
                 fused_scan: bool = False, log=print) -> dict:
    """Export the run named by ``run_path`` (run folder or its last.pt) and check it.

    Args:
        fmt: "onnx" or "openvino".
        out: destination folder (default ``<run>/export-<fmt>``); an earlier export
            there is replaced, any other existing content is refused.
        batch: "dynamic" (or None) for any batch size, or a fixed positive integer.
        n_images: images for the parity check.
        precision: "fp32" (default), "int8" (both formats) or "fp16" (openvino): see
            `mtad.deploy.quantize`; the default ``out`` is then ``<run>/export-<fmt>-<precision>``
            and the accuracy check (`mtad.deploy.quantize.check_accuracy`, budget
            ``max_drop``, default 0.005; any class ``max_class_drop``, default 0.02)
            replaces the parity check.
        quantize_images: a folder of images for INT8 statistics (default: 300 of the
            run's training images, over every class).
        max_reverted: int8: while the quantized model misses the budget, the layers
            (openvino: NNCF's accuracy-aware loop) or layer groups (onnx: the layer-group
            search) that may return to fp32; 0: plain post-training quantization, then
            the check; default 8 (`mtad.deploy.quantize.MAX_REVERTED`).
        fused_scan: openvino only: each selective scan as one custom node run by the
            extension `mtad.deploy.fused_scan` builds (instead of standard operators);
            metadata.json's graph "scan" says so and the inferencer loads the extension;
            the default ``out`` gains "-fused" (export-openvino-fused).

    Returns the metadata written to metadata.json (with ``"path"``: the export folder).

    Raises:
        CheckpointError: not a readable run.
        DeployError: unknown format or batch, a graph outside the standard operators,
            or a parity check that fails (the message gives the figures); for int8/fp16:
            fp16 with onnx, NNCF missing, a --quantize-images folder without images, or
            an accuracy check that fails (the message says by how much, and what the
            accuracy-aware loop did), --max-reverted below 0 or without int8; --fused-scan
            with onnx, or an extension that cannot be built (no compiler, ...).
        FileExistsError: ``out`` holds something other than an mtad export.
    """
    from mtad.deploy import quantize as q

    if fmt not in FORMATS:
        raise DeployError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    batch = parse_batch(batch)
    precision = q.check_precision(fmt, precision)
    max_drop = q.MAX_DROP if max_drop is None else float(max_drop)
    max_class_drop = q.MAX_CLASS_DROP if max_class_drop is None else float(max_class_drop)
    if precision != "int8" and quantize_images is not None:
        raise DeployError("--quantize-images is for --precision int8")
    if precision != "int8" and max_reverted is not None:
        raise DeployError("--max-reverted is for --precision int8 (its accuracy-aware search)")
    max_reverted = q.MAX_REVERTED if max_reverted is None else int(max_reverted)
    if max_reverted < 0:
        raise DeployError(f"--max-reverted {max_reverted}: must be 0 (no accuracy-aware search) "
                          "or more")
    if precision == "int8":
        q.import_nncf()         # missing: say so before minutes of tracing
    from mtad.deploy import fused_scan as fs

    if fused_scan:
        if fmt != "openvino":
            raise DeployError("--fused-scan is for --format openvino (onnxruntime's wheel ships "
                              "no C headers to build a custom operator against, and "
                              "onnxruntime-extensions' Python operators are slower than the "
                              "standard graph: benchmarks/README.md)")
        fs.library()            # no compiler etc.: say so before tracing
    import torch

    import mtad
    from mtad.data.transforms import IMAGENET_MEAN, IMAGENET_STD, MODEL_INPUT
    from mtad.deploy.inferencer import ExportedModel
    from mtad.deploy.torch_model import Normalised
    from mtad.runfile import load_run
    from mtad.ops import scan_export

    run = load_run(run_path, "cpu")
    out = _out_dir(run, (fmt if precision == "fp32" else f"{fmt}-{precision}")
                   + ("-fused" if fused_scan else ""), out)
    calibration, calib_info = (q.calibration_images(run, quantize_images) if precision == "int8"
                               else (None, None))
    size = int(run.config.data.image_size)
    net = Normalised(run.model).eval()
    check = None
    if precision != "fp32":   # the check's images, scored by torch fp32 once
        check = _score_check_images(run, net, precision, calibration, calib_info,
                            (max_drop, max_class_drop), log)
    tmp = partial_dir(out)
    try:
        t0 = time.perf_counter()
        onnx_path = tmp / MODEL_FILES["onnx"]
        with torch.no_grad():
            exporter = _torch_export_onnx(net, size, batch, onnx_path, fused_scan)
        graph = _onnx_check(onnx_path, fused_scan)
        quantization = None
        if precision != "fp32":
            log(f"{precision}: " + (f"quantizing with statistics from {calib_info['count']} images"
                                    f" ({calib_info['source']})" if precision == "int8"
                                    else "compressing the weights"))
            t1 = time.perf_counter()
            if precision == "fp16":
                done = q.compress_fp16(onnx_path, tmp)
            else:
                control = (check, max_reverted, log) if max_reverted else None
                if fmt == "openvino":
                    done = q.quantize_openvino(onnx_path, calibration, tmp, control)
                else:
                    fp32_path = tmp / "fp32.onnx"
                    os.replace(onnx_path, fp32_path)
                    done = q.quantize_onnx(fp32_path, calibration, onnx_path, control)
                    fp32_path.unlink()
            quantization = {"precision": precision, **done,
                            "operators": (list(q.QUANTIZED_OPS) if precision == "int8" else None),
                            "scope": ("MatMul/Gemm/Conv of the network with a constant weight "
                                      "input, but Mamba's causal conv1d; that conv1d, the "
                                      "selective scan (Add, Mul, Exp, its read-out MatMul), "
                                      "the anomaly map's smoothing and every other operator "
                                      "stay fp32" if precision == "int8" else
                                      "weights stored fp16; compute at the runtime's default "
                                      "inference precision"),
                            "fp32_layers": (list(q.FP32_LAYERS) if precision == "int8"
                                            else None),
                            "images": ({k: v for k, v in calib_info.items() if k != "class_of"}
                                       if calib_info else None),
                            "seconds": round(time.perf_counter() - t1, 2),
                            "tool_versions": q.tool_versions()}
        elif fmt == "openvino":
            _save_openvino(onnx_path, tmp)
        if fmt == "openvino" and onnx_path.exists():
            onnx_path.unlink()
        export_s = time.perf_counter() - t0
        files = [f.name for f in sorted(tmp.iterdir())]
        meta = {
            "format": fmt,
            "model_files": files,
            "mtad_version": mtad.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "input": {"name": "images", "shape": [batch or "batch", 3, size, size],
                      "batch": batch or "dynamic", "image_size": size, **MODEL_INPUT,
                      "normalisation": {"kind": "imagenet", "inside_graph": True,
                                        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}},
            "outputs": {"anomaly_map": [batch or "batch", 1, size, size],
                        "pred_score": [batch or "batch"]},
            "precision": precision,
            "graph": {**graph, "exporter": exporter, "scan": fs.FUSED if fused_scan else scan_export.DEFAULT_METHOD},
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
        if precision != "fp32":
            meta["quantization"] = quantization
            meta.update(_check_quantized(run, check, ExportedModel(tmp), precision, out, log,
                                         quantization.get("accuracy_aware")))
            (tmp / "metadata.json").write_text(json.dumps(meta, indent=2))
            _replace(tmp, out)
            return _done(run, out, fmt, batch, export_s, meta, log)
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
    return _done(run, out, fmt, batch, export_s, meta, log)


def _done(run, out: Path, fmt: str, batch, export_s: float, meta: dict, log) -> dict:
    size_mb = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    log(f"exported {run.checkpoint} to {out} ({fmt} {meta['precision']}, batch "
        f"{batch or 'dynamic'}, {size_mb:.1f} MB, {export_s:.1f} s)")
    return {**meta, "path": str(out)}


def _score_check_images(run, net, precision: str, calibration, calib_info, budget, log):
    """The accuracy check's images scored by the fp32 torch model
    (`mtad.deploy.quantize.check_data`); fp16 takes good images for the synthetic
    fallback from the training split (or synthetic ones)."""
    import torch

    from mtad.deploy import quantize as q

    if calibration is None:      # fp16: the synthetic fallback needs some good images
        try:
            calibration, calib_info = q.calibration_images(run, None, q.SYNTHETIC_CHECK_IMAGES)
        except DeployError:   # no training images either: synthetic ones
            x, _ = parity_images(run, q.SYNTHETIC_CHECK_IMAGES, log=lambda *a: None)
            calibration = list(np.rint(x.transpose(0, 2, 3, 1) * 255).astype(np.uint8))
            calib_info = {"class_of": ["synthetic"] * len(calibration)}

    def fp32_predict(x):
        with torch.no_grad():
            m, s = net(torch.from_numpy(x))
        return m.numpy(), s.numpy()

    return q.check_data(run, calibration, calib_info, fp32_predict, *budget, log=log)


def _check_quantized(run, data, exported, precision: str, out: Path, log, search=None) -> dict:
    """The accuracy check of an int8/fp16 export (`mtad.deploy.quantize.check_accuracy`):
    metadata's ``accuracy_check`` and ``thresholds`` (re-calibrated on the test split,
    else the run's, marked not re-calibrated). Raises DeployError when it fails."""
    from mtad.deploy import quantize as q

    figures = q.check_accuracy(run, data, exported.predict, precision, log=log)
    if search:
        groups = search.get("reverted_groups")
        figures["accuracy_aware"] = (
            ("NNCF's accuracy-aware loop" if groups is None else "the layer-group search")
            + f": {len(search['reverted_to_fp32'])} of the INT8 scope's layers returned to fp32"
            + ("" if groups is None else f" in {len(groups)} of {search['groups']} groups")
            + f" (at most --max-reverted {search['max_reverted']}), "
            f"{search['validations']} validations")
        log(figures["accuracy_aware"])
    log(q.accuracy_line(figures))
    if not figures["passed"]:
        error = DeployError(f"{precision} export failed its accuracy check, nothing written to "
                            f"{out}: " + "; ".join(figures["failures"])
                            + (f" (after {figures['accuracy_aware']})" if search else
                               "; --max-reverted N lets the accuracy-aware search return up to "
                               "N layers (onnx: layer groups) to fp32" if precision == "int8"
                               else ""))
        error.figures = figures        # the whole check, for benchmarks/deploy.py
        raise error
    recalibrated = figures.pop("thresholds")
    if recalibrated is not None:
        thresholds = {**recalibrated, "source": f"test split, re-calibrated for the {precision} "
                      "export", "recalibrated": True}
    else:
        thresholds = {**(run.thresholds or {}), "recalibrated": False,
                      "source": f"{(run.thresholds or {}).get('source', 'checkpoint')}; not "
                                f"re-calibrated for the {precision} export"}
        warnings.warn(f"the {precision} export keeps the run's fp32 thresholds (not re-calibrated:"
                      " the run's test split is not reachable)", stacklevel=2)
    figures["thresholds"] = "re-calibrated on the test split" if recalibrated else \
        "fp32 thresholds kept (not re-calibrated)"
    return {"accuracy_check": figures, "thresholds": thresholds,
            "fp32_thresholds": run.thresholds}


def describe_export(folder) -> str:
    """`mtad info EXPORT`: format, precision, source, thresholds' origin, the parity
    figures (fp32) or the quantization and accuracy check (int8, fp16), per class."""
    from mtad.deploy.inferencer import read_metadata

    meta = read_metadata(Path(folder))
    src = meta.get("source") or {}
    lines = [f"{folder}: {meta.get('format')} export, precision {meta.get('precision', 'fp32')}, "
             f"batch {meta['input'].get('batch')}, {meta['input']['image_size']} px; from "
             f"{src.get('checkpoint')} (epoch {src.get('epoch')}), mtad {meta.get('mtad_version')}",
             f"classes: {', '.join(meta.get('class_names') or []) or '(none recorded)'}",
             f"thresholds: {(meta.get('thresholds') or {}).get('source', '(none)')}"]
    if meta.get("parity"):
        lines.append(_parity_line(meta["parity"]))
    quant = meta.get("quantization")
    if quant:
        images = quant.get("images") or {}
        versions = ", ".join(f"{k} {v}" for k, v in (quant.get("tool_versions") or {}).items() if v)
        lines.append(f"quantization: {quant['precision']} by {quant.get('tool')}; "
                     f"{quant.get('scope')}" + (f"; statistics from {images.get('count')} images "
                                                f"({images.get('source')})" if images else "")
                     + f"; {versions}")
    check = meta.get("accuracy_check")
    if check:
        from mtad.deploy.quantize import accuracy_line

        p = check["precision"]
        if check.get("accuracy_aware"):
            lines.append(check["accuracy_aware"])
        lines.append(accuracy_line(check))
        keys = check["metrics"]
        lines.append("| class | " + " | ".join(f"{k} fp32 | {k} {p} | drop" for k in keys)
                     + " | verdicts flipped |")
        lines.append("|---|" + "---|---|---|" * len(keys) + "---|")

        def num(v, sign=False):
            return "n/a" if v is None else (f"{v:+.4f}" if sign else f"{v:.4f}")

        for c, row in check["classes"].items():
            lines.append(f"| {c} | " + " | ".join(
                f"{num(row['fp32'][k])} | {num(row[p][k])} | {num(row['drop'][k], True)}"
                for k in keys) + f" | {row.get('verdicts_flipped', 'n/a')} of {row.get('images')} |")
    return "\n".join(lines)


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

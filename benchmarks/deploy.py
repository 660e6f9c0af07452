"""Exported-model throughput vs torch eager, side by side in one run, and the scan designs.

Part "models": images/s at 256 x 256, batch 1 and batch 8, for the official model
(MTAD(), ResNet34, random encoder weights) and the demo model (configs/demo.yaml's
model section, EfficientNet-Lite0), with torch eager fp32, onnxruntime and OpenVINO
(both running the graph `mtad export` writes, fp32), plus export time and file size.

The same part quantizes each fp32 graph as `mtad export --precision` does
(mtad.deploy.quantize; statistics from 16 synthetic images: speed does not depend on
them) and times INT8 in onnxruntime (NNCF's ONNX path) and OpenVINO (NNCF), and
OpenVINO with fp16 weights; quantization time and file size of each.

Part "accuracy" (``--run RUN``, a trained run, e.g. `mtad demo`'s): `mtad export
--precision int8` for both formats (OpenVINO also with ``--fused-scan``) and fp16 for
OpenVINO, each with its accuracy check
on the run's test split at the default budget (plain PTQ unless ``--max-reverted N``);
prints the per-class figures against fp32, a refused export's too.

Part "scanops": the scan alone, at the official model's shapes at 256 px (per level:
windows x channels = 1 x 512, 1 x 256, 4 x 128, 16 x 64; 256 steps; d_state 8; 3/4/6/3
blocks), batch 1 and 8: torch's automatic backend (the compiled `cpp` one here) against
each export design in onnxruntime, per level and summed over the model's 16 blocks.

Part "fused": `mtad export --fused-scan` (the scan as one mtad.SelectiveScan node run by
the OpenVINO extension, mtad.deploy.fused_scan). The scan alone at OFFICIAL_SCANS (as
"scanops"): torch (cpp), the unrolled graph in onnxruntime and in OpenVINO, the fused node
in OpenVINO; then the official model at 256 px, batch 1 and 8: torch eager, OpenVINO fp32
(standard scan), OpenVINO fp32 fused, OpenVINO INT8 (NNCF) standard and fused.

Part "scan": the exportable scan's designs (mtad.ops.scan_export's unrolled one, with
and without chunks, and benchmarks/scan_designs.py's blocked, logdepth and loop) on a small MTAD at 256 px (demo encoder, depths
[1,1,1,1]): export time, file size, nodes, batch-1 latency in onnxruntime and
OpenVINO, and the largest map difference to torch.

    .venv/bin/python benchmarks/deploy.py [--part models|accuracy|scanops|fused|scan|all] [--quick]
                                          [--run RUN [--only VARIANT ...] [--max-reverted N]]

Each timing is the median of repeated calls after a warm-up; all runtimes use their
default thread count (2 here). Other processes on the machine disturb absolute
numbers; the ratios are measured in one run.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from mtad.config import load_config
from mtad.deploy import DeployError
from mtad.deploy.export import _save_openvino, export_model
from mtad.deploy.inferencer import ExportedModel
from mtad.deploy.torch_model import TorchModel
from mtad.models import MTAD
from mtad.ops import scan_export
from mtad.runfile import RunFile, save_run
import scan_designs  # benchmarks/scan_designs.py: blocked, logdepth, loop

SIZE = 256
ROOT = Path(__file__).resolve().parents[1]


def timed(fn, min_seconds: float, min_calls: int = 2) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def make_run(folder: Path, overrides: list[str]) -> Path:
    cfg = load_config(None, [f"data.image_size={SIZE}", *overrides])
    torch.manual_seed(0)
    model = MTAD(cfg.model, weights="none")
    save_run(RunFile(model=model.state_dict(), config=cfg.to_dict()), folder / "last.pt")
    return folder


def folder_mb(folder: Path, names) -> float:
    return sum((folder / n).stat().st_size for n in names) / 1e6


def bench_models(quick: bool, tmp: Path) -> None:
    demo = yaml.safe_load((ROOT / "mtad" / "configs" / "demo.yaml").read_text())["model"]
    models = {"official (resnet34)": [],
              "demo (efficientnet_lite0)": [f"model.{k}={v}" for k, v in demo.items()
                                            if k != "weights"]}
    rows, exports = [], []
    for name, overrides in models.items():
        run = make_run(tmp / name.split()[0], [*overrides, "model.weights=none"])
        t = time.perf_counter()
        meta = export_model(run, "onnx", out=run / "onnx", log=lambda *a: None)
        onnx_s = time.perf_counter() - t
        onnx_dir = Path(meta["path"])
        t = time.perf_counter()
        ov_dir = run / "ov"
        ov_dir.mkdir()
        _save_openvino(onnx_dir / "model.onnx", ov_dir)
        ov_s = time.perf_counter() - t
        p = meta["parity"]
        exports.append((name, onnx_s, meta["export_seconds"], folder_mb(onnx_dir, ["model.onnx"]),
                        ov_s, folder_mb(ov_dir, ["model.xml", "model.bin"]), meta["graph"]["nodes"],
                        p["map_diff_of_range"], p["max_score_rel_diff"]))
        runners = {"torch eager fp32": TorchModel(run, "cpu")}
        t = time.perf_counter()
        runners["onnxruntime"] = ExportedModel(onnx_dir, runtime="onnxruntime")
        load = {"onnxruntime": time.perf_counter() - t}
        t = time.perf_counter()
        runners["openvino"] = ExportedModel(onnx_dir, runtime="openvino")
        load["openvino"] = time.perf_counter() - t
        for label, folder, runtime, secs, files in quantized_variants(run, onnx_dir):
            exports.append((f"{name}, {label}", secs, secs, folder_mb(folder, files), 0.0, 0.0,
                            "", float("nan"), float("nan")))
            t = time.perf_counter()
            runners[label] = ExportedModel(folder, runtime=runtime)
            load[label] = time.perf_counter() - t
        for batch in (1, 8):
            x = np.random.default_rng(batch).random((batch, 3, SIZE, SIZE), dtype=np.float32)
            base = None
            for rname, runner in runners.items():
                sec = timed(lambda: runner.predict(x), 2.0 if quick else 8.0)
                ips = batch / sec
                base = base or ips
                rows.append((name, batch, rname, ips, ips / base, load.get(rname)))
                print(f"  {name:27s} batch {batch}  {rname:17s} {ips:7.2f} img/s  "
                      f"x{ips / base:4.2f}", flush=True)
    print("\nexport (256 px, dynamic batch; ONNX time = trace + check + parity on 4 images)")
    print("| model | ONNX export s (of which trace+check) | model.onnx MB | OpenVINO IR s | "
          "IR MB (fp32) | nodes | parity map diff / range | parity score rel |")
    print("|---|---|---|---|---|---|---|---|")
    for e in exports:
        print(f"| {e[0]} | {e[1]:.1f} ({e[2]:.1f}) | {e[3]:.1f} | {e[4]:.1f} | {e[5]:.1f} | {e[6]} "
              f"| {e[7]:.1e} | {e[8]:.1e} |")
    print("\nthroughput (256 px, images/s; ratio to torch eager in the same run)")
    print("| model | batch | runtime | images/s | vs torch | load s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        load = f"{r[5]:.1f}" if r[5] is not None else ""
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.2f}x | {load} |")


def quantized_variants(run: Path, onnx_dir: Path):
    """(label, folder, runtime, seconds, files) of INT8/fp16 versions of an fp32 export,
    made by mtad.deploy.quantize as `mtad export --precision` makes them (without its
    accuracy check: these models have random weights)."""
    import json
    import shutil

    from mtad.deploy import quantize as q
    rng = np.random.default_rng(0)      # smooth random colour fields, SIZE x SIZE x 3 uint8
    images = [np.kron(rng.integers(40, 216, (8, 8, 3)), np.ones((SIZE // 8, SIZE // 8, 1)))
              .astype(np.uint8) for _ in range(16)]
    meta = json.loads((onnx_dir / "metadata.json").read_text())
    made = []
    jobs = [("onnxruntime int8 (nncf)", "onnxruntime", "int8", "model.onnx",
             lambda f: q.quantize_onnx(onnx_dir / "model.onnx", images, f / "model.onnx")),
            ("openvino int8 (nncf)", "openvino", "int8", "model.xml",
             lambda f: q.quantize_openvino(onnx_dir / "model.onnx", images, f)),
            ("openvino fp16 weights", "openvino", "fp16", "model.xml",
             lambda f: q.compress_fp16(onnx_dir / "model.onnx", f))]
    for i, (label, runtime, precision, model_file, make) in enumerate(jobs):
        folder = onnx_dir.parent / f"q{i}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        t = time.perf_counter()
        make(folder)
        secs = time.perf_counter() - t
        (folder / "metadata.json").write_text(json.dumps({**meta, "precision": precision}))
        files = [model_file] + (["model.bin"] if model_file == "model.xml" else [])
        made.append((label, folder, runtime, secs, files))
        print(f"  {label}: made in {secs:.1f} s, {folder_mb(folder, files):.1f} MB", flush=True)
    return made


ACCURACY_VARIANTS = ("openvino int8", "openvino int8 fused", "onnx int8", "openvino fp16")


def bench_accuracy(run: Path, tmp: Path, only=None, max_reverted: int = 0) -> None:
    """INT8 (both formats) and fp16 exports of a trained run (``only``: some of
    ACCURACY_VARIANTS), each with its check at the default budget; a failed check's
    figures are printed too. ``max_reverted``: NNCF's accuracy-aware loop (0: plain)."""
    from mtad.deploy.inferencer import import_openvino

    caps = import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    print(f"\nOpenVINO CPU OPTIMIZATION_CAPABILITIES: {caps}")
    for label in only or ACCURACY_VARIANTS:
        fmt, precision, *fused = label.split()
        t = time.perf_counter()
        try:
            meta = export_model(run, fmt, out=tmp / label.replace(" ", "-"), precision=precision,
                                max_reverted=max_reverted if precision == "int8" else None,
                                fused_scan=bool(fused),
                                log=lambda *a: None)
        except DeployError as exc:     # a class beyond 0.02: the message lists every drop
            print(f"\n{label}: {time.perf_counter() - t:.0f} s, {exc}", flush=True)
            if not hasattr(exc, "figures"):
                continue
            meta = {"accuracy_check": exc.figures, "quantization": {"seconds": float("nan")}}
        secs = time.perf_counter() - t
        c = meta["accuracy_check"]
        print(f"\n{label}: export + check {secs:.0f} s "
              f"(quantization {meta['quantization']['seconds']:.0f} s), on {c['on']}")
        print("| class | I-AUROC fp32 | I-AUROC q | drop | P-AUROC fp32 | P-AUROC q | drop | "
              "AUPRO fp32 | AUPRO q | drop | verdicts flipped |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, row in c["classes"].items():
            cells = " | ".join(f"{row['fp32'][k]:.4f} | {row[precision][k]:.4f} | "
                               f"{row['drop'][k]:+.4f}" for k in ("image_auroc", "pixel_auroc",
                                                                  "pixel_aupro"))
            print(f"| {name} | {cells} | {row['verdicts_flipped']} of {row['images']} |")
        m = c["mean"]
        cells = " | ".join(f"{m[k]['fp32']:.4f} | {m[k][precision]:.4f} | {m[k]['drop']:+.4f}"
                           for k in ("image_auroc", "pixel_auroc", "pixel_aupro"))
        share = c["verdicts_flipped_share"]
        print(f"| **mean** | {cells} | {'' if share is None else f'{100 * share:.1f} %'} |")
        worst = max(d for r in c["classes"].values() for k, d in r["drop"].items()
                    if k != "pixel_aupro" and d is not None)
        ok = max(m["image_auroc"]["drop"], m["pixel_auroc"]["drop"]) <= 0.005 and worst <= 0.02
        print(f"largest class drop: {c['largest_class_drop']}; within 0.005 mean / 0.02 a "
              f"class: {ok}")


OFFICIAL_SCANS = [(512, 1, 3), (256, 1, 4), (128, 4, 6), (64, 16, 3)]  # channels, windows, blocks


class _ScanOnly(torch.nn.Module):
    def __init__(self, d: int, n: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.A = torch.nn.Parameter(-torch.rand(d, n, generator=g) * 8)
        self.D, self.bias = (torch.nn.Parameter(torch.randn(d, generator=g)) for _ in range(2))

    def forward(self, u, delta, B, C, z):
        return scan_export.selective_scan_export(u, delta, self.A, B, C, self.D, z, self.bias, True)


def bench_scanops(quick: bool) -> None:
    import io

    import onnxruntime as ort

    from mtad.ops.scan import selective_scan

    methods = [("unrolled", 16), ("blocked", 8), ("blocked", 16), ("logdepth", None)]
    print("\n| batch | level (windows x channels) | torch (cpp) ms | "
          + " | ".join(f"ORT {m}{' ' + str(k) if k else ''} ms" for m, k in methods) + " |")
    print("|---|---|---|" + "---|" * len(methods))
    for batch in (1, 8):
        totals = [0.0] * (1 + len(methods))
        for d, windows, blocks in OFFICIAL_SCANS:
            g = torch.Generator().manual_seed(1)
            b, n, l = windows * batch, 8, 256
            inputs = (torch.randn(b, d, l, generator=g), torch.randn(b, d, l, generator=g),
                      torch.randn(b, n, l, generator=g), torch.randn(b, n, l, generator=g),
                      torch.randn(b, d, l, generator=g))
            module = _ScanOnly(d, n)
            with torch.no_grad():
                times = [timed(lambda: selective_scan(inputs[0], inputs[1], module.A, inputs[2],
                                                      inputs[3], module.D, inputs[4], module.bias,
                                                      True), 0.5 if quick else 2.0)]
            for method, block in methods:
                scan_export.DEFAULT_METHOD, scan_designs.BLOCK = method, block or 16
                buf = io.BytesIO()
                try:
                    torch.onnx.export(module, inputs, buf, opset_version=17, dynamo=False)
                finally:
                    scan_export.DEFAULT_METHOD, scan_designs.BLOCK = "unrolled", 16
                sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
                feed = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}
                times.append(timed(lambda: sess.run(None, feed), 0.5 if quick else 2.0))
            totals = [t + blocks * x for t, x in zip(totals, times)]
            print(f"| {batch} | {windows * batch} x {d} | "
                  + " | ".join(f"{1000 * t:.1f}" for t in times) + " |", flush=True)
        print(f"| {batch} | **all 16 blocks** | " + " | ".join(f"**{1000 * t:.0f}**" for t in totals)
              + " |", flush=True)


def bench_fused(quick: bool, tmp: Path) -> None:
    bench_fused_scan(quick)
    bench_fused_model(quick, tmp)


def bench_fused_scan(quick: bool, batches=(1, 8)) -> None:
    """The scan alone at OFFICIAL_SCANS: torch, unrolled in ORT and OpenVINO, fused."""
    import io

    import onnxruntime as ort

    from mtad.deploy import fused_scan
    from mtad.ops import scan_fused
    from mtad.ops.scan import selective_scan

    core = fused_scan.core(fused=True)
    secs = 0.5 if quick else 2.0
    print("\nthe scan alone (official shapes; ms per call; all 16 blocks = sum over blocks)")
    print("| batch | level (windows x channels) | torch (cpp) | ORT unrolled | OpenVINO unrolled "
          "| OpenVINO fused |")
    print("|---|---|---|---|---|---|")
    names = ["u", "delta", "B", "C", "z"]
    graphs = {}
    for d, _, _ in OFFICIAL_SCANS:
        module, x = _ScanOnly(d, 8), tuple(torch.randn(2, k, 256) for k in (d, d, 8, 8, d))
        for fused in (False, True):
            buf = io.BytesIO()
            with warnings_off(), (scan_fused.exporting() if fused else contextlib.nullcontext()):
                torch.onnx.export(module, x, buf, opset_version=17, dynamo=False,
                                  input_names=names, dynamic_axes={k: {0: "b"} for k in names},
                                  custom_opsets=scan_fused.OPSET if fused else None)
            graphs[d, fused] = buf.getvalue()
    for batch in batches:
        totals = [0.0] * 4
        for d, windows, blocks in OFFICIAL_SCANS:
            g = torch.Generator().manual_seed(1)
            b, n, l = windows * batch, 8, 256
            inputs = [torch.randn(b, k, l, generator=g) for k in (d, d, n, n, d)]
            module = _ScanOnly(d, n)
            feed = dict(zip(names, (t.numpy() for t in inputs)))
            with torch.no_grad():
                times = [timed(lambda: selective_scan(inputs[0], inputs[1], module.A, inputs[2],
                                                      inputs[3], module.D, inputs[4], module.bias,
                                                      True), secs)]
            sess = ort.InferenceSession(graphs[d, False], providers=["CPUExecutionProvider"])
            times.append(timed(lambda: sess.run(None, feed), secs))
            for fused in (False, True):
                c = core.compile_model(core.read_model(graphs[d, fused], b""), "CPU",
                                       {"PERFORMANCE_HINT": "LATENCY",
                                        "INFERENCE_PRECISION_HINT": "f32"})
                times.append(timed(lambda: c(feed), secs))
            totals = [t + blocks * x for t, x in zip(totals, times)]
            print(f"| {batch} | {windows * batch} x {d} | "
                  + " | ".join(f"{1000 * t:.1f}" for t in times) + " |", flush=True)
        print(f"| {batch} | **all 16 blocks** | " + " | ".join(f"**{1000 * t:.0f}**" for t in totals)
              + " |", flush=True)



def bench_fused_model(quick: bool, tmp: Path) -> None:
    """The official model at 256 px: torch eager, OpenVINO fp32 / INT8, standard / fused."""
    import json

    from mtad.deploy import quantize as q
    from mtad.deploy.export import _torch_export_onnx

    run = make_run(tmp / "official_fused", ["model.weights=none"])
    quiet = lambda *a: None  # noqa: E731
    t = time.perf_counter()
    std = Path(export_model(run, "openvino", out=run / "ov", log=quiet)["path"])
    std_s = time.perf_counter() - t
    t = time.perf_counter()
    meta = export_model(run, "openvino", out=run / "ovf", fused_scan=True, log=quiet)
    fused_s = time.perf_counter() - t
    fus = Path(meta["path"])
    print(f"\nofficial model: standard export {std_s:.0f} s, fused {fused_s:.0f} s "
          f"({meta['graph']['nodes']} nodes); fused parity: map diff / range "
          f"{meta['parity']['map_diff_of_range']:.1e}")
    runners = {"torch eager fp32": TorchModel(run, "cpu"),
               "openvino fp32": ExportedModel(std), "openvino fp32 fused": ExportedModel(fus)}
    rng = np.random.default_rng(0)
    images = [np.kron(rng.integers(40, 216, (8, 8, 3)), np.ones((SIZE // 8, SIZE // 8, 1)))
              .astype(np.uint8) for _ in range(16)]
    net = runners["torch eager fp32"].net
    for label, fused in (("openvino int8", False), ("openvino int8 fused", True)):
        folder = run / label.replace(" ", "_")
        folder.mkdir()
        onnx_path = folder / "fp32.onnx"
        try:
            with torch.no_grad():
                _torch_export_onnx(net, SIZE, None, onnx_path, fused)
            t = time.perf_counter()
            q.quantize_openvino(onnx_path, images, folder)
            onnx_path.unlink()
            src = json.loads(((fus if fused else std) / "metadata.json").read_text())
            (folder / "metadata.json").write_text(json.dumps({**src, "precision": "int8"}))
            runners[label] = ExportedModel(folder)
            print(f"  {label}: quantized in {time.perf_counter() - t:.0f} s", flush=True)
        except Exception as exc:   # a failure is a result too
            print(f"  {label}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    print("\n| model | batch | runtime | images/s | vs torch | map diff / range vs torch |")
    print("|---|---|---|---|---|---|")
    for batch in (1, 8):
        x = np.random.default_rng(batch).random((batch, 3, SIZE, SIZE), dtype=np.float32)
        base, ref, maps = None, runners["torch eager fp32"].predict(x)[0], {}
        for rname, runner in runners.items():
            maps[rname] = runner.predict(x)[0]
            diff = np.abs(maps[rname] - ref).max() / (ref.max() - ref.min())
            ips = batch / timed(lambda: runner.predict(x), 2.0 if quick else 8.0)
            base = base or ips
            print(f"| official | {batch} | {rname} | {ips:.2f} | {ips / base:.2f}x | {diff:.1e} |",
                  flush=True)
        if "openvino int8 fused" in maps and "openvino int8" in maps:
            a, b = maps["openvino int8 fused"], maps["openvino int8"]
            print(f"  batch {batch}: int8 fused vs int8 standard, map diff / range "
                  f"{np.abs(a - b).max() / (b.max() - b.min()):.1e}", flush=True)


@contextlib.contextmanager
def warnings_off():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def bench_scan(quick: bool, tmp: Path) -> None:
    run = make_run(tmp / "scan", ["model.encoder=efficientnet_lite0", "model.depths=[1,1,1,1]"])
    variants = [("unrolled", 16, "torchscript"), ("unrolled", 256, "torchscript"),
                ("blocked", None, "torchscript"), ("logdepth", None, "torchscript"),
                ("unrolled", 16, "dynamo"),
                ("loop", None, "dynamo")]
    print("\n| scan | exporter | export s | MB | nodes | ORT b1 ms | OpenVINO b1 ms | "
          "map diff / range |")
    print("|---|---|---|---|---|---|---|---|")
    x = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    for method, chunk, exporter in variants:
        scan_export.DEFAULT_METHOD = method
        if chunk:
            scan_export.UNROLLED_CHUNK = chunk
        os.environ["MTAD_ONNX_EXPORTER"] = exporter
        label = method + (f" (chunk {chunk})" if chunk else "")
        try:
            t = time.perf_counter()
            meta = export_model(run, "onnx", out=tmp / "scan_out", log=lambda *a: None)
            secs = time.perf_counter() - t
            out = Path(meta["path"])
            ort = ExportedModel(out, runtime="onnxruntime")
            ov = ExportedModel(out, runtime="openvino")
            ort_ms = 1000 * timed(lambda: ort.predict(x), 1.0 if quick else 4.0)
            ov_ms = 1000 * timed(lambda: ov.predict(x), 1.0 if quick else 4.0)
            print(f"| {label} | {exporter} | {secs:.1f} | {folder_mb(out, ['model.onnx']):.1f} | "
                  f"{meta['graph']['nodes']} | {ort_ms:.1f} | {ov_ms:.1f} | "
                  f"{meta['parity']['map_diff_of_range']:.1e} |", flush=True)
        except Exception as exc:  # a design that does not export is a result too
            print(f"| {label} | {exporter} | failed: {type(exc).__name__}: "
                  f"{str(exc).splitlines()[0][:120]} | | | | | |", flush=True)
        finally:
            scan_export.DEFAULT_METHOD, scan_export.UNROLLED_CHUNK = "unrolled", 16
            os.environ.pop("MTAD_ONNX_EXPORTER", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("models", "accuracy", "scanops", "fused", "scan", "all"),
                        default="all")
    parser.add_argument("--run", help="part accuracy: a trained run (e.g. `mtad demo`'s)")
    parser.add_argument("--quick", action="store_true", help="shorter timings")
    parser.add_argument("--only", action="append", choices=ACCURACY_VARIANTS,
                        help="part accuracy: this variant only (repeatable)")
    parser.add_argument("--max-reverted", type=int, default=0,
                        help="part accuracy: NNCF's accuracy-aware loop, as mtad export's flag")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average "
          f"{os.getloadavg()[0]:.2f} at start")
    scan_designs.register()
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("models", "all"):
            bench_models(args.quick, Path(tmp))
        if args.part in ("accuracy", "all") and args.run:
            bench_accuracy(Path(args.run), Path(tmp), args.only, args.max_reverted)
        if args.part in ("scanops", "all"):
            bench_scanops(args.quick)
        if args.part in ("fused", "all"):
            bench_fused(args.quick, Path(tmp))
        if args.part in ("scan", "all"):
            bench_scan(args.quick, Path(tmp))
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()

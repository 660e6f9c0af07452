"""The `mtad` command: parses arguments and calls the engine, nothing more."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"


def _config_path(name: str | None) -> Path | None:
    """A config file, or the name of a shipped one (`demo`, `mtad_mvtec`, ...); None stays None."""
    if name is None:
        return None
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (name if name.endswith(".yaml") else name + ".yaml")
    return shipped if shipped.is_file() else path


def cmd_train(args) -> int:
    from mtad.config import load_config
    from mtad.engine.train import train

    if args.resume:
        if args.config or args.overrides:
            print("note: --resume continues with the run's saved config; -c and overrides are ignored")
        train(None, resume=args.resume)
        return 0
    # Without -c, the defaults (the official recipe) plus the overrides.
    train(load_config(_config_path(args.config), args.overrides))
    return 0


def cmd_finetune(args) -> int:
    from mtad.engine.finetune import finetune

    run, *overrides = args.run
    finetune(run, args.add_good, args.epochs, args.out, lr=args.lr, overrides=overrides)
    return 0


def cmd_test(args) -> int:
    from mtad.engine.test import run_test

    run_test(args.checkpoint, _config_path(args.config), args.overrides, out_dir=args.out,
             device=args.device, save_thresholds=args.save_thresholds)
    return 0


def cmd_convert(args) -> int:
    from mtad.engine.convert import convert_checkpoint, parse_classes

    try:
        classes = parse_classes(args.classes)
    except ValueError as exc:
        print(f"mtad convert: error: {exc}", file=sys.stderr)
        return 2
    convert_checkpoint(args.checkpoint, args.out, classes)
    return 0


def cmd_predict(args) -> int:
    from mtad.deploy import open_model
    from mtad.engine.predict import check_out_dir, predict

    check_out_dir(args.out)        # before the model loads: a mistyped --out fails at once
    station = None
    if args.log:        # a bad log file is a one-line error before the model loads
        from mtad.station.recorder import open_station

        station = open_station(args.log, keep=args.keep, keep_days=args.keep_days,
                               station=args.station)
    model = open_model(args.checkpoint or args.model, device=args.device)
    if station is not None:
        from mtad.station.recorder import model_sha256

        station.model_sha256 = model_sha256(model)
    summary = predict(model, args.inputs, args.out, class_name=args.class_name,
                      threshold=args.threshold, pixel_threshold=args.pixel_threshold,
                      batch_size=args.batch_size, station=station)
    return 0 if summary["processed"] else 1


def cmd_export(args) -> int:
    from mtad.deploy.export import export_model

    import time

    started = time.perf_counter()
    check = ("checking that the export scores as torch does" if args.precision == "fp32" else
             f"quantizing it to {args.precision} and checking its accuracy against fp32")
    print(f"mtad export: loading {args.run}, converting it to {args.format} and {check} "
          "(the official model: minutes on a CPU)", flush=True)
    export_model(args.run, args.format, out=args.out, batch=args.batch, precision=args.precision,
                 max_drop=args.max_drop, quantize_images=args.quantize_images,
                 max_reverted=args.max_reverted, fused_scan=args.fused_scan)
    print(f"mtad export: done in {time.perf_counter() - started:.1f} s in all")
    return 0


def cmd_synth(args) -> int:
    from mtad.data.synth import make_demo_dataset

    summary = make_demo_dataset(args.out, seed=args.seed, image_size=args.image_size,
                                n_train=args.n_train, n_test_good=args.n_test_good,
                                n_test_defect=args.n_test_defect,
                                n_calibration=args.n_calibration)
    classes = summary["classes"]
    n_train = sum(c["train"] for c in classes.values())
    n_good = sum(c["test_good"] for c in classes.values())
    n_bad = sum(sum(c["test_defect"].values()) for c in classes.values())
    print(f"demo dataset written to {args.out} (MVTec AD layout, {summary['image_size']} px, "
          f"seed {summary['seed']}): {len(classes)} classes ({', '.join(classes)}); "
          f"{n_train} normal training images, {n_good} normal and {n_bad} defective test "
          f"images with masks ({', '.join(summary['defect_kinds'])})\n"
          f"  provenance and licences: {Path(args.out) / 'README.txt'}; every crop and "
          f"defect: {Path(args.out) / 'demo_manifest.json'}\n"
          f"  train on it: mtad train -c demo data.root={args.out}")
    return 0


def cmd_demo(args) -> int:
    from mtad.engine.demo import run_demo

    run_demo(Path(args.out), _config_path("demo"), args.overrides)
    return 0


def cmd_calibrate(args) -> int:
    from mtad.deploy import open_model
    from mtad.engine.calibrate import calibrate, model_store

    if args.activate is None and not args.good:
        from mtad.calibration import CalibrationError

        raise CalibrationError("give --good DIR [DIR ...], or --activate N")
    model = open_model(args.model, device=args.device)
    if args.activate is not None:
        t = model_store(model).activate(args.activate)
        print(f"calibration v{t.version} ({t.method}, {t.created}) is now active for {args.model}")
        return 0
    calibrate(model, args.good, class_name=args.class_name, false_reject=args.false_reject,
              confidence=args.confidence, ng_false_reject=args.ng_false_reject)
    return 0


def _print_calibrations(folder: Path, sha) -> None:
    from mtad.calibration import CALIBRATION_FILE, CalibrationStore

    if not (Path(folder) / CALIBRATION_FILE).is_file():
        print("calibrations: none (the thresholds the model was saved with apply; "
              "`mtad calibrate MODEL --good DIR` makes one)")
        return
    store = CalibrationStore(folder, sha() if callable(sha) else sha)
    print(f"calibrations in {store.path} (* active):")
    for line in store.describe():
        print(f"  {line}")


def _export_sha(folder: Path):
    """The SHA-256 of the checkpoint an export was made from (its metadata.json)."""
    import json

    meta = json.loads((Path(folder) / "metadata.json").read_text())
    return (meta.get("source") or {}).get("sha256")


def cmd_info(args) -> int:
    from mtad.deploy import is_export

    overrides = list(args.overrides)
    if len(overrides) == 1 and args.config is None and is_export(overrides[0]):
        # `mtad info EXPORT`: what the export is, its check and (int8/fp16) quantization,
        # and its calibrations (no torch)
        from mtad.deploy.export import describe_export

        folder = Path(overrides[0])
        print(describe_export(folder))
        _print_calibrations(folder, _export_sha(folder))
        return 0
    from mtad.config import load_config
    from mtad.models.complexity import describe

    run_path = None
    if overrides and "=" not in overrides[0] and args.config is None:
        # `mtad info RUN`: a run folder or checkpoint, named as for test/predict/export
        from mtad.config import apply_overrides, config_from_dict
        from mtad.runfile import checkpoint_path, read_run

        run_path = checkpoint_path(overrides.pop(0))
        saved = read_run(run_path).config
        cfg = config_from_dict(apply_overrides(saved, overrides))
        cfg.model.weights = "none"  # counts need no weights (and a run's are in its checkpoint)
    else:
        cfg = load_config(_config_path(args.config), overrides)
    print(describe(cfg.model, cfg.data.image_size))
    if run_path is not None:
        from mtad.files import file_sha256

        _print_calibrations(run_path.parent, lambda: file_sha256(run_path))
    return 0


def cmd_serve(args) -> int:
    """`mtad serve`: the inspection page and REST API (mtad/serve), model loaded once."""
    try:
        from mtad.serve import Limits, serve
    except ImportError as exc:
        print(f"mtad serve: error: {exc.name or exc} is missing; install the serve extra: "
              f"pip install 'mtad[serve]'", file=sys.stderr)
        return 2
    from mtad.postprocess import ThresholdError

    try:
        limits = Limits(max_file_bytes=int(args.max_file_mb * 1024 * 1024),
                        max_pixels=args.max_pixels, max_files=args.max_files,
                        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
                        queue=args.queue, max_batch=args.max_batch,
                        max_request_pixels=args.max_request_pixels)
        inspection_log = None if args.log is None else dict(
            db=args.log, station=args.station, keep=args.keep, keep_days=args.keep_days,
            drift_window=args.drift_window)
        serve(args.model, host=args.host, port=args.port, class_name=args.class_name,
              save_dir=args.save, limits=limits, device=args.device,
              image_threshold=args.threshold, pixel_threshold=args.pixel_threshold,
              inspection_log=inspection_log)
    except (ThresholdError, ValueError, OSError) as exc:
        print(f"mtad serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_log(args) -> int:
    """`mtad log DB`: the newest inspections, or all matching ones as CSV."""
    from mtad.station.log import InspectionLog, export_rows, format_table, write_csv

    filters = dict(class_name=args.class_name, verdict=args.verdict, since=args.since,
                   until=args.until)
    with InspectionLog(args.db, readonly=True) as log:
        if args.csv is None:
            print(format_table(log.query(limit=args.limit, offset=args.offset, **filters)))
            return 0
        rows = export_rows(log, **filters)
    if args.csv == "-":
        write_csv(rows, sys.stdout)
    else:
        with open(args.csv, "w", newline="") as handle:
            write_csv(rows, handle)
        print(f"{len(rows)} inspection(s) written to {args.csv}")
    return 0


def cmd_review_export(args) -> int:
    """`mtad review export DB --out DIR`: operator-confirmed parts as an MVTec-layout set."""
    from mtad.station.review import export_reviewed

    summary = export_reviewed(args.db, args.out, class_name=args.class_name)
    for cls, n in summary["written"].items():
        print(f"{cls}: {n['good']} good -> {Path(args.out) / cls / 'train/good'}, "
              f"{n['defect']} defect -> {Path(args.out) / cls / 'test/defect'}")
    if not summary["written"]:
        print(f"no reviewed part with a kept image in {args.db}")
    if summary["no_image"]:
        print(f"note: {summary['no_image']} reviewed part(s) have no kept image (--keep none or "
              "--keep-days) and are not exported")
    if summary["no_class"]:
        print(f"note: {summary['no_class']} reviewed part(s) were judged without a class; "
              "name one with --class NAME to export them")
    return 0


_python_format_warning = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """mtad's own warnings (data problems, ...) as one line for people, without the
    Python source location, labelled by the category's ``label`` ("warning" unless it says
    otherwise: the scan kernel's build notes are "note"); everyone else's as Python prints them."""
    if category.__module__.startswith("mtad"):
        return f"{getattr(category, 'label', 'warning')}: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


def _positive(kind, zero: bool = False):
    """An argparse type: a number > 0 (>= 0 with `zero`); argparse names the flag."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (value >= 0 if zero else value > 0):
            raise argparse.ArgumentTypeError(
                f"must be {'0 or more' if zero else 'greater than 0'}, got {text}")
        return value

    return parse


# mtad.ops.scan.BACKENDS less "export" (chosen by torch.onnx.export itself), and "auto";
# written out so that parsing imports no torch (tests/test_runfile.py keeps the two equal).
SCAN_BACKENDS = ("auto", "chunked", "cpp", "reference", "cuda")


def _scan_backend_flag(p) -> None:
    p.add_argument("--scan-backend", choices=SCAN_BACKENDS, metavar="NAME",
                   help="selective-scan implementation for this process: "
                   f"{', '.join(SCAN_BACKENDS)} (default: $MTAD_SCAN_BACKEND, else auto: "
                   "cuda on a GPU with mamba_ssm, cpp on CPU when its kernel builds, else "
                   "chunked); a run-time choice, never saved in a run")


def _apply_scan_backend(args) -> None:
    """--scan-backend overrides MTAD_SCAN_BACKEND for this process and the processes it
    starts (data-loader workers, serve's worker): the dispatcher (mtad.ops.scan) reads it."""
    name = getattr(args, "scan_backend", None)
    if name == "auto":
        os.environ.pop("MTAD_SCAN_BACKEND", None)
    elif name is not None:
        os.environ["MTAD_SCAN_BACKEND"] = name


def _log_flags(p) -> None:
    """--log DB and what goes with it (serve and predict)."""
    p.add_argument("--log", metavar="DB", help="record every inspected image in this SQLite "
                   "inspection log (created when missing; see mtad log)")
    p.add_argument("--station", help="the station name recorded with each row")
    p.add_argument("--keep", choices=("flagged", "all", "none"), default="flagged",
                   help="whose images the log keeps as PNG in <db stem>.images/ (default: "
                   "flagged, the REVIEW and NG parts)")
    p.add_argument("--keep-days", type=_positive(float), metavar="N",
                   help="delete kept images older than N days (rows stay)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtad", description="MTAD: train one anomaly-detection model on the normal images "
        "of all product classes, evaluate it, and find defects in new images.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    overrides = dict(nargs="*", metavar="KEY=VALUE",
                     help="dotted config overrides, e.g. data.root=/data/mvtec optim.lr=1e-3")

    p = sub.add_parser("train", help="train one model on all classes of a dataset",
                       epilog="Every config key with its default and allowed values: the README's "
                       "'Config keys' table, or `python -m mtad.config`.")
    p.add_argument("-c", "--config", help="YAML run config (a path, or a shipped name: demo, "
                   "mtad_mvtec, mtad_visa, mtad_realiad)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run where it stopped")
    p.add_argument("overrides", **overrides)
    _scan_backend_flag(p)
    p.set_defaults(func=cmd_train)

    run_help = "a run folder, or its last.pt"
    p = sub.add_parser("finetune", help="continue a finished run with more good images, as a "
                       "new run (the original is never modified)")
    p.add_argument("run", nargs="+", metavar="RUN [KEY=VALUE ...]",
                   help=run_help + ", then dotted config overrides (e.g. data.root=/new/place)")
    p.add_argument("--add-good", nargs="+", required=True, metavar="DIR",
                   help="folders of good images in a dataset layout, e.g. what mtad review "
                   "export writes (<class>/train/good/)")
    p.add_argument("--epochs", type=_positive(int), required=True, help="epochs to add")
    p.add_argument("--out", required=True, metavar="NEW_RUN", help="the new run folder")
    p.add_argument("--lr", type=_positive(float), help="constant learning rate (default: the "
                   "run's final one, optim.lr x optim.decay_factor)")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("test", help="evaluate a trained run on a test split (exact metrics)")
    p.add_argument("-c", "--config", help="config whose data/eval sections to use "
                   "(default: the run's own)")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help=run_help)
    p.add_argument("--out", help="where results go (default: <run>/test)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the run's train.device)")
    p.add_argument("--save-thresholds", action="store_true", help="store the F1-optimal "
                   "thresholds it calibrates in the run (its last.pt), for predict, export "
                   "and serve")
    p.add_argument("overrides", **overrides)
    _scan_backend_flag(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("convert", help="a run folder from a checkpoint the authors' code "
                       "trained (net.pth, net_<epoch>.pth or ckpt.pth)")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="the official state dict file")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run folder to write "
                   "(new or empty)")
    p.add_argument("--classes", metavar="A,B,C", help="the product classes it was trained on "
                   "(default: none recorded)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("predict", help="score new images; write heat maps, masks and scores.csv")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", metavar="RUN", help=run_help + " (PyTorch)")
    which.add_argument("--model", metavar="DIR", help="a folder written by mtad export "
                       "(ONNX or OpenVINO; no PyTorch needed)")
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively; "
                   "the output folder and earlier mtad outputs are skipped)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="product class whose calibrated thresholds apply (default: pooled)")
    p.add_argument("--threshold", type=float, help="image-score threshold: pred_score >= it is "
                   "NG, one level (default: the active calibration: good-part levels from "
                   "`mtad calibrate`, else the F1-optimal one calibrated at evaluation)")
    p.add_argument("--pixel-threshold", type=float, help="anomaly-map threshold for the "
                   "predicted defect masks (default: calibrated; else the image threshold)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (checkpoints)")
    p.add_argument("--batch-size", type=_positive(int), default=8,
                   help="images per model call (default 8)")
    _log_flags(p)
    _scan_backend_flag(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("calibrate", help="thresholds from good parts at a target false-reject "
                       "rate (OK / REVIEW / NG), stored as a new version of calibration.json")
    p.add_argument("model", metavar="MODEL", help="a run folder, its last.pt, or an export "
                   "folder (no PyTorch needed)")
    p.add_argument("--good", nargs="+", metavar="DIR", help="good images: DIR/<class>/..., a "
                   "dataset root (its test split's good images), or any folder with --class")
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="all --good images are of this class")
    p.add_argument("--false-reject", type=float, default=0.01, metavar="RATE",
                   help="target share of good parts flagged (REVIEW or NG), in (0, 1); "
                   "default 0.01")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="confidence of the guarantee, in (0, 1); default 0.95")
    p.add_argument("--ng-false-reject", type=float, metavar="RATE", help="target share of good "
                   "parts rejected outright (NG), below --false-reject (default: no NG level: "
                   "flagged parts go to review)")
    p.add_argument("--activate", type=int, metavar="N", help="make calibration version N the "
                   "active one (nothing is scored)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (runs)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("export", help="export a run to ONNX or OpenVINO (checked against torch)")
    p.add_argument("run", help="a run folder or its last.pt")
    p.add_argument("--format", required=True, choices=("onnx", "openvino"))
    p.add_argument("--out", help="export folder (default: <run>/export-<format>)")
    p.add_argument("--batch", default="dynamic", help="a fixed batch size, or dynamic (default)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "int8", "fp16"),
                   help="fp32 (default, parity-checked); int8 (NNCF post-training quantization "
                   "of MatMul/Gemm/Conv, accuracy-checked; default folder export-<format>-int8); "
                   "fp16 (openvino only: fp16 weights)")
    p.add_argument("--max-drop", type=float, default=None, metavar="AUROC",
                   help="int8/fp16: largest mean image or pixel AUROC drop allowed against fp32 "
                   "(default 0.005); any class may drop at most 0.02")
    p.add_argument("--max-reverted", type=int, default=None, metavar="N",
                   help="int8: layers (openvino: NNCF's accuracy-aware loop) or layer groups "
                   "(onnx) that may return to fp32 while the model misses --max-drop (0: plain "
                   "post-training quantization; default 8)")
    p.add_argument("--quantize-images", metavar="DIR", help="int8: images for the quantization "
                   "statistics (default: 300 of the run's training images, over every class)")
    p.add_argument("--fused-scan", action="store_true",
                   help="openvino: write each selective scan as one custom node, run by a C++ "
                   "extension built on first use (needs g++; faster than the default graph of "
                   "standard operators)")
    _scan_backend_flag(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("synth", help="write the offline demo dataset (MVTec AD layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--n-train", type=int, default=40, help="normal training images per class")
    p.add_argument("--n-test-good", type=int, default=12, help="normal test images per class")
    p.add_argument("--n-test-defect", type=int, default=16, help="defective test images per class")
    p.add_argument("--n-calibration", type=int, default=0, help="good images per class for "
                   "`mtad calibrate`, in calibration/<class>/ (from the photo's test part; "
                   "299 give 1%% false-reject at 95%% confidence)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("demo", help="offline end to end: demo data, train, evaluate, report")
    p.add_argument("--out", default="demo_out")
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="inspection web page and REST API for a trained model")
    p.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder, its last.pt, or an "
                   "export folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this "
                   "machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--class", dest="class_name", metavar="NAME", help="class whose calibrated "
                   "thresholds apply when a request names none (default: pooled)")
    p.add_argument("--save", metavar="DIR", help="also keep every upload, its overlay and a "
                   "predictions.csv in DIR (default: nothing is written)")
    p.add_argument("--threshold", type=float, help="image threshold (default: calibrated)")
    p.add_argument("--pixel-threshold", type=float, help="pixel threshold (default: calibrated)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (checkpoints)")
    p.add_argument("--max-file-mb", type=_positive(float), default=20.0,
                   help="bytes per image (MB)")
    p.add_argument("--max-pixels", type=_positive(int), default=40_000_000,
                   help="decoded pixels per image")
    p.add_argument("--max-request-pixels", type=_positive(int), default=160_000_000,
                   help="decoded pixels per request, all its files together (default "
                        "%(default)s); the files past it answer 413")
    p.add_argument("--max-files", type=_positive(int), default=32, help="images per request")
    p.add_argument("--max-request-mb", type=_positive(float), default=100.0,
                   help="bytes per request (MB)")
    p.add_argument("--queue", type=_positive(int, zero=True), default=8,
                   help="requests waiting for the model before 503")
    p.add_argument("--max-batch", type=_positive(int), default=8, help="images per model call")
    _log_flags(p)
    p.add_argument("--drift-window", type=_positive(int), default=200, metavar="N",
                   help="parts per class the drift monitor (GET /api/monitor) compares with "
                   "the calibration (default 200)")
    _scan_backend_flag(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("log", help="the inspection log that serve/predict --log write: print "
                       "the newest rows, or export them as CSV")
    p.add_argument("db", metavar="DB", help="the SQLite log (e.g. inspections.db)")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="only this class")
    p.add_argument("--verdict", help="only these verdicts: OK, REVIEW, NG (comma-separated)")
    p.add_argument("--since", help="from this UTC time on (ISO 8601, e.g. 2026-12-02T08:00Z)")
    p.add_argument("--until", help="before this UTC time (ISO 8601)")
    p.add_argument("--limit", type=_positive(int), default=50, help="rows printed (default 50)")
    p.add_argument("--offset", type=_positive(int, zero=True), default=0)
    p.add_argument("--csv", nargs="?", const="-", metavar="FILE", help="write every matching "
                   "row as CSV to FILE (or stdout); cells never start a spreadsheet formula")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("review", help="operator reviews in an inspection log")
    review = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = review.add_parser("export", help="write the parts marked good to <class>/train/good/ "
                          "and those marked defect to <class>/test/defect/ (MVTec layout)")
    q.add_argument("db", metavar="DB", help="the inspection log")
    q.add_argument("--out", required=True, help="dataset folder to write")
    q.add_argument("--class", dest="class_name", metavar="NAME",
                   help="class for parts judged without one (default: not exported)")
    q.set_defaults(func=cmd_review_export)

    p = sub.add_parser("info", help="model summary: parameters by group and FLOPs per image; "
                       "`mtad info RUN [key=value ...]` for a run folder or checkpoint")
    p.add_argument("-c", "--config", help="run config (default: the official model)")
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=cmd_info)
    return parser


# (module, exception) pairs that mean bad input: exit status 2. Only modules already
# imported are consulted (an exception of a module never loaded cannot have been
# raised), so an exported model runs through the CLI without torch.
USER_ERRORS = (("mtad.config", "ConfigError"), ("mtad.data.errors", "DataError"),
               ("mtad.runfile", "CheckpointError"),
               ("mtad.models.encoder", "EncoderWeightsError"), ("mtad.postprocess", "ThresholdError"),
               ("mtad.deploy.errors", "DeployError"), ("mtad.station.log", "LogError"),
               ("mtad.calibration", "CalibrationError"))


def _loaded(pairs) -> tuple[type[BaseException], ...]:
    return tuple(getattr(sys.modules[m], name) for m, name in pairs if m in sys.modules)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 success; 1 nothing could be processed (predict: every input
    unreadable); 2 bad input (config key or value, data, device, checkpoint,
    threshold, file) with a one-line message; 3 training diverged (the last good
    checkpoint is kept); 130 interrupted."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "finetune" and all("=" in e for e in extra):
        args.run += extra    # overrides after the flags (argparse stops its positionals there)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    warnings.formatwarning = _format_warning
    _apply_scan_backend(args)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"mtad {args.command}: interrupted; checkpoints already written are kept",
              file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _loaded(USER_ERRORS) + (FileNotFoundError, FileExistsError)):
            from mtad.report.cells import printable  # a file name of any bytes

            message = printable(exc).strip().splitlines()
            print(f"mtad {args.command}: error: {message[0] if message else type(exc).__name__}",
                  file=sys.stderr)
            return 2
        if isinstance(exc, _loaded([("mtad.engine.train", "TrainingDiverged")])):
            print(f"mtad {args.command}: stopped: {exc}", file=sys.stderr)
            return 3
        raise

if __name__ == "__main__":
    sys.exit(main())

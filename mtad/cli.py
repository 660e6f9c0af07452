"""The `mtad` command: parses arguments and calls the engine, nothing more."""
from __future__ import annotations

import argparse
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


def cmd_test(args) -> int:
    from mtad.engine.test import run_test

    run_test(args.checkpoint, _config_path(args.config), args.overrides, out_dir=args.out,
             device=args.device)
    return 0


def cmd_predict(args) -> int:
    from mtad.deploy import open_model
    from mtad.engine.predict import predict

    model = open_model(args.checkpoint or args.model, device=args.device)
    summary = predict(model, args.inputs, args.out, class_name=args.class_name,
                      threshold=args.threshold, pixel_threshold=args.pixel_threshold,
                      batch_size=args.batch_size)
    return 0 if summary["processed"] else 1


def cmd_export(args) -> int:
    from mtad.deploy.export import export_model

    export_model(args.run, args.format, out=args.out, batch=args.batch)
    return 0


def cmd_synth(args) -> int:
    from mtad.data.synth import make_demo_dataset

    summary = make_demo_dataset(args.out, seed=args.seed, image_size=args.image_size,
                                n_train=args.n_train, n_test_good=args.n_test_good,
                                n_test_defect=args.n_test_defect,
                                n_calibration=args.n_calibration)
    print(f"demo dataset written to {args.out}: {summary}")
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


def cmd_info(args) -> int:
    overrides = list(args.overrides)
    if overrides and "=" not in overrides[0] and args.config is None:
        from mtad.deploy import is_export

        if is_export(overrides[0]):   # an export folder: metadata and calibrations, no torch
            import json

            folder = Path(overrides[0])
            meta = json.loads((folder / "metadata.json").read_text())
            source = meta.get("source") or {}
            print(f"export {folder}: {meta.get('format')}, image size "
                  f"{meta.get('input', {}).get('image_size')}, classes "
                  f"{', '.join(meta.get('class_names') or []) or '-'}, from {source.get('checkpoint')} "
                  f"(epoch {source.get('epoch')}, SHA-256 {str(source.get('sha256'))[:12]}...)")
            _print_calibrations(folder, source.get("sha256"))
            return 0
    from mtad.config import load_config
    from mtad.models.complexity import describe

    run_path = None
    if overrides and "=" not in overrides[0] and args.config is None:
        # `mtad info RUN`: a run folder or checkpoint, named as for test/predict/export
        from mtad.config import apply_overrides, config_from_dict
        from mtad.engine.checkpoint import checkpoint_path, load_checkpoint

        run_path = checkpoint_path(overrides[0])
        saved = load_checkpoint(overrides.pop(0))["config"]
        cfg = config_from_dict(apply_overrides(saved, overrides))
    else:
        cfg = load_config(_config_path(args.config), overrides)
    print(describe(cfg.model, cfg.data.image_size))
    if run_path is not None:
        from mtad.calibration import file_sha256

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
                        queue=args.queue, max_batch=args.max_batch)
        serve(args.model, host=args.host, port=args.port, class_name=args.class_name,
              save_dir=args.save, limits=limits, device=args.device,
              image_threshold=args.threshold, pixel_threshold=args.pixel_threshold)
    except (ThresholdError, ValueError, OSError) as exc:
        print(f"mtad serve: error: {exc}", file=sys.stderr)
        return 2
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtad", description="MTAD: train one anomaly-detection model on the normal images "
        "of all product classes, evaluate it, and find defects in new images.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    overrides = dict(nargs="*", metavar="KEY=VALUE",
                     help="dotted config overrides, e.g. data.root=/data/mvtec optim.lr=1e-3")

    p = sub.add_parser("train", help="train one model on all classes of a dataset")
    p.add_argument("-c", "--config", help="YAML run config (a path, or a shipped name: demo, "
                   "mtad_mvtec, mtad_visa, mtad_realiad)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run where it stopped")
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=cmd_train)

    run_help = "a run folder, or its last.pt"
    p = sub.add_parser("test", help="evaluate a trained run on a test split (exact metrics)")
    p.add_argument("-c", "--config", help="config whose data/eval sections to use "
                   "(default: the run's own)")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help=run_help)
    p.add_argument("--out", help="where results go (default: <run>/test)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the run's train.device)")
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=cmd_test)

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
    p.add_argument("--batch-size", type=int, default=8)
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
    p.add_argument("--max-files", type=_positive(int), default=32, help="images per request")
    p.add_argument("--max-request-mb", type=_positive(float), default=100.0,
                   help="bytes per request (MB)")
    p.add_argument("--queue", type=_positive(int, zero=True), default=8,
                   help="requests waiting for the model before 503")
    p.add_argument("--max-batch", type=_positive(int), default=8, help="images per model call")
    p.set_defaults(func=cmd_serve)

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
               ("mtad.engine.checkpoint", "CheckpointError"),
               ("mtad.models.encoder", "EncoderWeightsError"), ("mtad.postprocess", "ThresholdError"),
               ("mtad.deploy.errors", "DeployError"), ("mtad.calibration", "CalibrationError"))


def _loaded(pairs) -> tuple[type[BaseException], ...]:
    return tuple(getattr(sys.modules[m], name) for m, name in pairs if m in sys.modules)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 success; 1 nothing could be processed (predict: every input
    unreadable); 2 bad input (config key or value, data, device, checkpoint,
    threshold, file) with a one-line message; 3 training diverged (the last good
    checkpoint is kept); 130 interrupted."""
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _format_warning
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"mtad {args.command}: interrupted; checkpoints already written are kept",
              file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _loaded(USER_ERRORS) + (FileNotFoundError, FileExistsError)):
            message = str(exc).strip().splitlines()
            print(f"mtad {args.command}: error: {message[0] if message else type(exc).__name__}",
                  file=sys.stderr)
            return 2
        if isinstance(exc, _loaded([("mtad.engine.train", "TrainingDiverged")])):
            print(f"mtad {args.command}: stopped: {exc}", file=sys.stderr)
            return 3
        raise

if __name__ == "__main__":
    sys.exit(main())

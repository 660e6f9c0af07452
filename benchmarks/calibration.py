"""Good-part calibration end to end on the demo data: calibrate on one set of good
images per class (`mtad synth --n-calibration`, seed 0), then measure on another
set (seed 1: other crops of the photos' test part, never seen by training) the
false-reject rate, and on the run's defective test images the share sent to
REVIEW or NG.

    .venv/bin/python benchmarks/calibration.py RUN [--out DIR] [--n 300]

RUN: a demo run (`mtad demo`; its data at seed 0). The script copies it, so the
run itself gets no calibration.json. Same as, by hand:

    mtad synth --out A --n-calibration 300            # A/calibration/<class>/
    mtad synth --out B --seed 1 --n-calibration 300
    mtad calibrate RUN --good A/calibration
    mtad predict --checkpoint RUN B/calibration/brick --out pb --class brick   # per class
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtad.data.errors import Problems  # noqa: E402
from mtad.data.layouts import list_records  # noqa: E402
from mtad.data.synth import make_demo_dataset  # noqa: E402
from mtad.deploy import open_model  # noqa: E402
from mtad.engine.calibrate import calibrate, score_images  # noqa: E402
from mtad.postprocess import select_thresholds, verdict_of  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--out", default="/tmp/mtad_calibration_bench")
    ap.add_argument("--n", type=int, default=300, help="good images per class and set")
    ap.add_argument("--false-reject", type=float, default=0.01)
    ap.add_argument("--ng-false-reject", type=float, default=None)
    ap.add_argument("--classes", nargs="+", default=None, help="only these demo classes")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    run = out / "run"
    run.mkdir()
    for name in ("last.pt", "config.yaml", "results.json"):
        if (Path(args.run) / name).is_file():
            shutil.copy2(Path(args.run) / name, run / name)
    started = time.time()
    for name, seed in (("A", 0), ("B", 1)):
        make_demo_dataset(out / name, seed=seed, n_calibration=args.n,
                          **({"classes": args.classes} if args.classes else {}))
    print(f"calibration sets written in {time.time() - started:.0f} s")
    model = open_model(run, "cpu")
    epoch = model.run.epoch
    t = time.time()
    calibrate(model, [out / "A" / "calibration"], false_reject=args.false_reject,
              ng_false_reject=args.ng_false_reject)
    print(f"calibrated in {time.time() - t:.0f} s")
    model = open_model(run, "cpu")
    data = model.run.config.data
    records = list_records(data.root, data.layout, "test", data.classes, Problems("skip"))
    rows = {}
    for cls in args.classes or model.class_names:
        choice = select_thresholds(model.thresholds, cls)
        held = sorted((out / "B" / "calibration" / cls).glob("*.png"))
        good = score_images(model, held)
        bad = score_images(model, [Path(r.image_path) for r in records
                                   if r.class_name == cls and r.label == 1])
        verdicts = [verdict_of(s, choice) for s in good]
        caught = [verdict_of(s, choice) for s in bad]
        rows[cls] = {"threshold": choice.image, "ng_threshold": choice.ng,
                     "good": len(good), "false_reject": sum(v != "OK" for v in verdicts) / len(good),
                     "defective": len(bad),
                     "defective_flagged": sum(v != "OK" for v in caught) / max(1, len(bad)),
                     "defective_ng": sum(v == "NG" for v in caught) / max(1, len(bad)),
                     "guaranteed": model.thresholds.classes[cls].provenance["achieved_false_reject"]}
    print(f"\nrun {args.run} (epoch {epoch}); calibrated on {args.n} good images per class "
          f"(seed 0), measured on {args.n} others (seed 1); target {args.false_reject:g} at 95 %")
    print("| class | threshold | guaranteed FRR | measured FRR (held-out good) | defective in REVIEW or NG |")
    print("|---|---:|---:|---:|---:|")
    for cls, r in rows.items():
        print(f"| {cls} | {r['threshold']:.4g} | <= {r['guaranteed']:.4f} | "
              f"{r['false_reject']:.4f} ({round(r['false_reject'] * r['good'])}/{r['good']}) | "
              f"{r['defective_flagged']:.3f} ({round(r['defective_flagged'] * r['defective'])}"
              f"/{r['defective']}) |")
    (out / "summary.json").write_text(json.dumps({"run": args.run, "epoch": epoch, "rows": rows}, indent=1))
    print(f"total {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

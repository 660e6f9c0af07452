"""Does the station's loop fix what it is for? A "new look" of good parts, before and after.

1. Train on the demo data (`configs/demo.yaml`, as `mtad demo`), or reuse --run.
2. Good parts the model has not seen: `mtad synth` with another seed, test region only
   (never trained on), 96 per class: 40 calibrate, 20 stay unchanged, 16 + 20 get a
   "new look" (a lighting / colour shift: RGB x (1.25, 1.05, 0.85) + 12, clipped).
3. Per class: the threshold from the 40 calibration parts (the good-part rule of
   `mtad calibrate` at n = 40: their largest score), the false-reject rate on the 20
   held-out new-look parts, and the drift monitor on 20 new-look parts (should flag)
   and on the 20 unchanged ones (should not).
4. Fine-tune (`mtad finetune`) with the 16 confirmed new-look parts per class, then
   re-calibrate on the same 40 calibration parts and measure again; and the original
   test split's image and pixel AUROC before and after (nothing forgotten: within 0.01).

    .venv/bin/python benchmarks/line_loop.py --out /tmp/line_loop [--run demo_out/run]
        [--finetune-epochs 5] [--quick]
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mtad.station.drift import Reference, monitor

SHIFT_GAIN, SHIFT_OFFSET = np.array([1.25, 1.05, 0.85]), 12.0


def new_look(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * SHIFT_GAIN + SHIFT_OFFSET, 0, 255).astype(np.uint8)


def scores_of(model, images: list[np.ndarray]) -> np.ndarray:
    from mtad.data.transforms import model_input

    out = []
    for i in range(0, len(images), 8):
        batch = np.stack([model_input(x, model.image_size) for x in images[i:i + 8]])
        out.append(model.predict(batch)[1])
    return np.concatenate(out).astype(np.float64)


def measure(run: Path, sets: dict) -> dict:
    """Per class: threshold, false-reject rate on held-out new-look parts, monitor verdicts."""
    from mtad.deploy import open_model

    model = open_model(run, "cpu")
    out = {}
    for cls, parts in sets.items():
        s = {k: scores_of(model, v) for k, v in parts.items()}
        threshold = float(s["calibrate"].max())
        ref = Reference(s["calibrate"], threshold)

        def drifts(window):
            verdicts = ["OK" if v <= threshold else "REVIEW" for v in window]
            row = monitor({cls: (window, verdicts)}, {cls: ref}, window=len(window))["classes"][0]
            return bool(row["drift"]), row["p_value"]

        out[cls] = {"threshold": threshold,
                    "frr_new_look": float((s["held_out"] > threshold).mean()),
                    "frr_unchanged": float((s["unchanged"] > threshold).mean()),
                    "drift_new_look": drifts(s["new_look_window"]),
                    "drift_unchanged": drifts(s["unchanged"])}
    results = json.loads((run / "results.json").read_text())
    out["_auroc"] = {"image": results["mean"]["image_auroc"],
                     "pixel": results["mean"]["pixel_auroc"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--run", help="a trained demo run to reuse (default: train one)")
    ap.add_argument("--finetune-epochs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 training epochs, 1 fine-tuning")
    args = ap.parse_args()
    from mtad.cli import _config_path
    from mtad.config import load_config
    from mtad.data.synth import make_demo_dataset
    from mtad.engine.finetune import finetune
    from mtad.engine.train import train

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    quick = ["train.epochs=2"] if args.quick else []
    run = Path(args.run) if args.run else out / "run"
    if not (run / "last.pt").exists():
        if not (out / "data" / "demo_summary.json").exists():
            make_demo_dataset(out / "data", seed=0)
        t = time.time()
        train(load_config(_config_path("demo"), quick + [f"data.root={out / 'data'}",
                                                         f"train.out_dir={run}"]))
        print(f"trained in {time.time() - t:.0f} s")
    fresh = out / "unseen"
    if not (fresh / "demo_summary.json").exists():
        make_demo_dataset(fresh, seed=7, n_train=1, n_test_good=96, n_test_defect=0)  # test part only is used
    sets, confirmed = {}, out / "confirmed"
    shutil.rmtree(confirmed, ignore_errors=True)
    for cls_dir in sorted(p for p in fresh.iterdir() if (p / "test" / "good").is_dir()):
        imgs = [np.asarray(Image.open(p).convert("RGB"))
                for p in sorted((cls_dir / "test" / "good").glob("*.png"))]
        sets[cls_dir.name] = {"calibrate": imgs[:40], "unchanged": imgs[40:60],
                              "new_look_window": [new_look(x) for x in imgs[76:96]],
                              "held_out": [new_look(x) for x in imgs[76:96]]}
        folder = confirmed / cls_dir.name / "train" / "good"   # as mtad review export writes
        folder.mkdir(parents=True)
        for i, x in enumerate(imgs[60:76]):
            Image.fromarray(new_look(x)).save(folder / f"{i:03d}.png")
    before = measure(run, sets)
    tuned = out / "tuned"
    shutil.rmtree(tuned, ignore_errors=True)
    t = time.time()
    finetune(run, [confirmed], 1 if args.quick else args.finetune_epochs, tuned,
             overrides=["data.num_workers=0"])
    seconds = time.time() - t
    after = measure(tuned, sets)
    print(f"\nfine-tuning: {1 if args.quick else args.finetune_epochs} epoch(s), {seconds:.0f} s "
          f"(with the final evaluation)")
    print("| class | FRR new look before | after | FRR unchanged before | after | drift new look "
          "| drift unchanged |")
    print("|---|---:|---:|---:|---:|---|---|")
    for cls in sets:
        b, a = before[cls], after[cls]
        print(f"| {cls} | {b['frr_new_look']:.2f} | {a['frr_new_look']:.2f} | "
              f"{b['frr_unchanged']:.2f} | {a['frr_unchanged']:.2f} | "
              f"{'flagged' if b['drift_new_look'][0] else 'not flagged'} (p {b['drift_new_look'][1]:.2g}) | "
              f"{'flagged' if b['drift_unchanged'][0] else 'not flagged'} (p {b['drift_unchanged'][1]:.2g}) |")
    print(f"\noriginal test split, mean image AUROC {before['_auroc']['image']:.3f} -> "
          f"{after['_auroc']['image']:.3f}, pixel AUROC {before['_auroc']['pixel']:.3f} -> "
          f"{after['_auroc']['pixel']:.3f}")
    (out / "line_loop.json").write_text(json.dumps({"before": before, "after": after,
                                                    "finetune_s": seconds}, indent=1))


if __name__ == "__main__":
    main()

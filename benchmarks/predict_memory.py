"""Peak memory of `mtad predict` per photo pixel: peak RSS on one 6000 x 4000 PNG minus
peak RSS on one 64 x 64 PNG (the method of ../shared/bugcases/22), with an untrained tiny
64 px run (the model's size does not change the per-pixel cost).
Run: .venv/bin/python benchmarks/predict_memory.py  (about 1.5 min, ~1.3 GB)."""
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from mtad.config import load_config
from mtad.models import create_model
from mtad.runfile import RunFile, save_run

W, H = 6000, 4000


def peak_rss(work: str, folder: str) -> tuple[int, float]:
    """(peak RSS in bytes, wall s) of one `mtad predict` process on work/folder."""
    t = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "mtad", "predict", "--checkpoint",
                             f"{work}/run", f"{work}/{folder}", "--out", f"{work}/out_{folder}",
                             "--device", "cpu"], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"mtad predict failed on {folder}")
    return usage.ru_maxrss * 1024, time.time() - t


def main() -> None:
    work = tempfile.mkdtemp(prefix="mtad_predict_memory_")
    cfg = load_config(None, ["data.image_size=64", "model.encoder=efficientnet_lite0",
                             "model.weights=none", "model.depths=[1,1,1,1]"])
    thresholds = {"image": 0.5, "pixel": 0.4, "source": "fixed", "epoch": 1, "classes": {},
                  "missing": {}}
    save_run(RunFile(model=create_model(**cfg.model.to_dict()).state_dict(),
                     config=cfg.to_dict(), epoch=1, class_names=["a"], thresholds=thresholds),
             os.path.join(work, "run", "last.pt"))
    texture = (np.random.default_rng(0).random((400, 600, 3)) * 60 + 100).astype(np.uint8)
    for folder in ("big", "small"):
        os.makedirs(f"{work}/{folder}")
    Image.fromarray(texture).resize((W, H), Image.BILINEAR).save(f"{work}/big/photo.png",
                                                                 compress_level=1)
    Image.fromarray(texture[:64, :64]).save(f"{work}/small/photo.png")
    small, t_small = peak_rss(work, "small")
    big, t_big = peak_rss(work, "big")
    print(f"peak RSS: 64 x 64 photo {small / 1e6:.0f} MB ({t_small:.1f} s); {W} x {H} photo "
          f"{big / 1e6:.0f} MB ({t_big:.1f} s); the large photo adds {(big - small) / 1e6:.0f} MB"
          f" = {(big - small) / (W * H):.1f} bytes a pixel (its RGB alone: 3)")


if __name__ == "__main__":
    main()

"""mtad finetune: a new run from a finished one's weights, on its training images plus
added good parts; the original is never modified."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from conftest import SIZE
from mtad.cli import main
from mtad.runfile import read_run


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _added(root, n=4):
    rng = np.random.default_rng(5)
    folder = root / "alpha" / "train" / "good"        # what mtad review export writes
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(40, 200, (SIZE, SIZE, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
    return root


def test_finetune_starts_from_the_run_adds_the_images_and_leaves_the_original(trained_run,
                                                                            tmp_path, capsys):
    added = _added(tmp_path / "confirmed")
    before = {p.name: _sha(p) for p in trained_run.iterdir() if p.is_file()}
    new = tmp_path / "tuned"
    # lr 1e-12: AdamW's steps are about lr in size, so the weights stay the original's to
    # ~1e-9 after 3 steps; a run that did not start from them would differ by O(0.1)
    assert main(["finetune", str(trained_run), "--add-good", str(added), "--epochs", "1",
                 "--out", str(new), "--lr", "1e-12", "data.num_workers=0"]) == 0
    out = capsys.readouterr().out
    assert "training on 16 images" in out          # 12 original + 4 added
    assert {p.name: _sha(p) for p in trained_run.iterdir() if p.is_file()} == before
    old, tuned = read_run(trained_run), read_run(new)
    assert tuned.epoch == 1 and len(tuned.train_loss) == 4    # 16 images, batch 4
    assert tuned.config["train"]["init_from"] == str((trained_run / "last.pt").resolve())
    assert tuned.config["data"]["extra_train"] == [str(added.resolve())]
    assert tuned.config["optim"]["lr"] == 1e-12 and tuned.config["optim"]["decay_factor"] == 1
    diffs = {k: float((old.model[k].float() - v.float()).abs().max())
             for k, v in tuned.model.items() if v.is_floating_point()}
    # batch-norm running statistics move with every training batch whatever the rate;
    # the weights themselves must stay where the original run left them
    weights = {k: d for k, d in diffs.items() if "running_" not in k}
    assert max(weights.values()) < 1e-6, sorted(weights.items(), key=lambda kv: -kv[1])[:3]
    assert (new / "results.json").is_file() and tuned.thresholds is not None
    # the tiny run has F1 thresholds, no good-part calibration: the new run says what is next
    assert f"no good-part calibration to repeat; {new} has the thresholds" in out
    assert out.rstrip().endswith(f"Next: mtad calibrate {new} --good DIR")
    assert not (new / "calibration.json").exists()


def test_finetune_recalibrates_on_the_good_parts_of_the_runs_calibration(trained_run, tmp_path,
                                                                         capsys):
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    rng = np.random.default_rng(9)
    held = tmp_path / "held" / "alpha"                # good parts never trained on
    held.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(rng.integers(40, 200, (SIZE, SIZE, 3), dtype=np.uint8)).save(held / f"{i}.png")
    assert main(["calibrate", str(run), "--good", str(held.parent), "--false-reject", "0.2"]) == 0
    first = json.loads((run / "calibration.json").read_text())["versions"][0]
    assert first["request"] == {"good": [str(held.parent.resolve())], "class_name": None,
                                "false_reject": 0.2, "confidence": 0.95, "ng_false_reject": None}
    new = tmp_path / "tuned"
    assert main(["finetune", str(run), "--add-good", str(_added(tmp_path / "confirmed")),
                 "--epochs", "1", "--out", str(new), "data.num_workers=0"]) == 0
    assert "re-calibrating on the good parts of" in capsys.readouterr().out
    made = json.loads((new / "calibration.json").read_text())
    assert made["active"] == 1 and made["versions"][0]["request"] == first["request"]
    # made for the new checkpoint (its scores), from the same 5 images
    assert made["versions"][0]["checkpoint_sha256"] == _sha(new / "last.pt") != first["checkpoint_sha256"]
    assert made["versions"][0]["classes"]["alpha"]["provenance"]["n_images"] == 5


def test_finetune_refuses_the_original_folder_and_a_missing_folder(trained_run, tmp_path, capsys):
    assert main(["finetune", str(trained_run), "--add-good", str(tmp_path), "--epochs", "1",
                 "--out", str(trained_run)]) == 2
    assert "never modified" in capsys.readouterr().err
    assert main(["finetune", str(trained_run), "--add-good", str(tmp_path / "nope"),
                 "--epochs", "1", "--out", str(tmp_path / "n")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_the_default_schedule_is_the_runs_final_learning_rate_held_constant(trained_run, tmp_path):
    from mtad.engine.finetune import finetune_config

    cfg = finetune_config(trained_run, [tmp_path], 3, tmp_path / "n")
    assert cfg.optim.lr == pytest.approx(1e-3 * 0.1)   # tiny run: lr 1e-3, decay_factor 0.1
    assert cfg.optim.decay_factor == 1.0 and cfg.train.epochs == 3 and cfg.train.eval_every == 0

"""The engine at its edges: mistyped config values, bad data found before training,
predict's inputs and thresholds, evaluation size and mode, divergence over processes."""
import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtad.config import ConfigError, load_config
from mtad.data import DataError, open_split
from mtad.deploy import open_model
from mtad.runfile import CheckpointError, RunFile, load_run, read_run, save_run
from mtad.engine.evaluate import evaluate
from mtad.engine.predict import predict
from mtad.engine.train import seed_everything, train
from mtad.postprocess import ThresholdError
from conftest import SIZE, run_cli, tiny_overrides, write_tiny_mvtec

quiet = dict(log=lambda *a: None)


@pytest.fixture
def run(trained_run):
    return trained_run  # 2 epochs, evaluated after the second


@pytest.mark.parametrize("override, key, allowed", [
    ("data.layout=mvtech", "data.layout", "did you mean mvtec?"),
    ("data.on_error=ignore", "data.on_error", "allowed: raise, skip"),
    ("data.image_size=0", "data.image_size", "32 or more"),
    ("train.amp=bf61", "train.amp", "allowed: none, bf16, fp16"),
    ("train.device=gpu", "train.device", "allowed: auto, cpu, cuda, cuda:N"),
    ("eval.size=-4", "eval.size", "greater than 0"),
])
@pytest.mark.slow
def test_mistyped_config_values_are_one_line_errors_naming_key_and_choices(override, key, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(Path("mtad/configs/demo.yaml"), [override])
    assert str(err.value).startswith(f"{key}: ") and allowed in str(err.value)
    cli = run_cli("train", "-c", "demo", override, "data.root=/nowhere")
    assert cli.returncode == 2
    message = str(err.value).replace("mtad/configs/demo.yaml", str(Path("mtad/configs/demo.yaml").resolve()))
    assert cli.stderr.strip().splitlines() == [f"mtad train: error: {message}"]


def test_choices_match_case_insensitively():
    cfg = load_config(None, ["data.layout=MVTec", "data.on_error=Skip", "train.amp=BF16",
                             "train.device=CPU"])
    assert (cfg.data.layout, cfg.data.on_error, cfg.train.amp, cfg.train.device) == (
        "mvtec", "skip", "bf16", "cpu")


def test_wrong_size_test_mask_stops_before_the_first_step(data_root, tmp_path, monkeypatch):
    from mtad.models import MTAD

    root = tmp_path / "bad"
    shutil.copytree(data_root, root)
    mask = root / "beta/ground_truth/square/001_mask.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(mask)
    steps = []
    monkeypatch.setattr(MTAD, "loss", lambda self, x: steps.append(1))
    with pytest.raises(DataError, match=r"001_mask.png: mask is 40x40 but its image .* is 64x64"):
        train(load_config(None, tiny_overrides(root, tmp_path / "run")), **quiet)
    assert steps == [] and not (tmp_path / "run" / "last.pt").exists()


def test_checkpoint_is_written_before_evaluation(data_root, tmp_path, monkeypatch):
    import mtad.engine.train as engine_train

    def failing_evaluation(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(engine_train, "evaluate", failing_evaluation)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train(load_config(None, tiny_overrides(data_root, tmp_path / "run", epochs=1)), **quiet)
    assert read_run(tmp_path / "run").epoch == 1


def test_run_records_classes_per_class_thresholds_and_losses(run):
    opened = load_run(run)
    assert opened.class_names == ["alpha", "beta"] and opened.epoch == 2
    thresholds = opened.thresholds
    assert set(thresholds["classes"]) == {"alpha", "beta"}
    for values in (thresholds, *thresholds["classes"].values()):
        assert values["image"] is not None and values["pixel"] is not None
    record = read_run(run)
    assert [step for step, _ in record.train_loss] == list(range(6))  # 2 x 12 images / batch 4
    history = json.loads((run / "history.json").read_text())
    assert history["train_loss"] == record.train_loss and history["evaluations"][0]["epoch"] == 2


def test_evaluation_at_eval_size_and_mode_restored(run, data_root):
    opened = load_run(run)
    cfg = opened.config
    cfg.eval.size = 2 * SIZE
    test_set = open_split(cfg.data, "test", mask_size=cfg.eval.size)
    assert test_set[0]["gt_mask"].shape == (1, 2 * SIZE, 2 * SIZE)
    model = opened.model.train()
    results = evaluate(model, test_set, cfg, torch.device("cpu"), progress=False)
    assert model.training
    assert results["protocol"]["pixel_metrics_size"] == 2 * SIZE
    assert results["protocol"]["image_size"] == SIZE
    # The same maps at the model's size: image metrics agree, pixel metrics are close.
    cfg.eval.size = SIZE
    small = evaluate(model.eval(), open_split(cfg.data, "test", mask_size=SIZE), cfg,
                     torch.device("cpu"), progress=False)
    assert not model.training
    assert results["mean"]["image_auroc"] == small["mean"]["image_auroc"]
    # masks and maps resampled to another size: a difference of resampling, not of rounding
    assert results["mean"]["pixel_auroc"] == pytest.approx(small["mean"]["pixel_auroc"], abs=0.02)


def test_defect_lost_at_eval_size_is_counted(tmp_path, run):
    root = write_tiny_mvtec(tmp_path / "thin")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[10, 10] = 255  # one pixel: gone after a bilinear shrink to 16 px
    Image.fromarray(mask).save(root / "alpha/ground_truth/square/000_mask.png")
    cfg = load_run(run).config
    cfg.data.root = str(root)
    cfg.eval.size = 16
    results = evaluate(load_run(run).model, open_split(cfg.data, "test", mask_size=16), cfg,
                       torch.device("cpu"), progress=False)
    assert results["protocol"]["anomalous_with_empty_mask"] == 1
    assert "1 defective test image" in results["notes"]["all"]


def test_predict_never_reads_its_own_outputs(run, data_root, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(data_root / "alpha/test/good/000.png", photos / "p1.png")
    shutil.copy(data_root / "alpha/test/square/000.png", photos / "p2.png")
    model = open_model(run)
    for out in (photos / "found", photos / "found", photos / "again"):
        summary = predict(model, [photos], out, log=lambda *a: None)
        rows = list(csv.DictReader(open(out / "scores.csv")))
        assert summary["processed"] == 2
        assert sorted(Path(r["image_path"]).name for r in rows) == ["p1.png", "p2.png"]


@pytest.mark.slow
def test_predict_refuses_its_input_folder_as_output(run, data_root, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(data_root / "alpha/test/good/000.png", photos / "p1.png")
    cli = run_cli("predict", "--checkpoint", str(run), str(photos), "--out", str(photos))
    assert cli.returncode == 2
    assert "is also an input folder; choose another output folder" in cli.stderr
    assert sorted(p.name for p in photos.iterdir()) == ["p1.png"]  # nothing written there


def test_train_never_writes_into_a_folder_of_other_files(data_root, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes\n")
    (mine / "results.md").write_text("my results\n")
    with pytest.raises(FileExistsError, match=r"is not empty and holds no run \(results\.md\)"):
        train(load_config(None, tiny_overrides(data_root, mine)))
    assert (mine / "config.yaml").read_text() == "my own notes\n"


@pytest.mark.slow
def test_predict_with_class_thresholds_and_unknown_class(run, data_root, tmp_path):
    model = open_model(run)
    image = data_root / "beta/test/square/000.png"
    summary = predict(model, [image], tmp_path / "o", class_name="beta", log=lambda *a: None)
    assert summary["image_threshold"] == model.thresholds.classes["beta"].image
    assert summary["image_threshold_source"] == "class beta (test split, epoch 2)"
    row = next(csv.DictReader(open(tmp_path / "o" / "scores.csv")))
    assert row["class_name"] == "beta" and row["image_threshold_source"].startswith("class beta")
    with pytest.raises(ThresholdError, match="unknown class 'gamma'; known classes: alpha, beta"):
        predict(model, [image], tmp_path / "o2", class_name="gamma", log=lambda *a: None)
    cli = run_cli("predict", "--checkpoint", str(run), str(image), "--out", str(tmp_path / "o3"),
                  "--class", "gamma")
    assert cli.returncode == 2 and "known classes: alpha, beta" in cli.stderr


def test_predict_falls_back_and_says_why(tmp_path):
    from mtad.postprocess import select_thresholds

    saved = {"image": 0.5, "pixel": None, "source": "test split", "epoch": 3,
             "classes": {"a": {"image": None, "pixel": None}},
             "missing": {"pixel": "the test split has no ground-truth masks"}}
    choice = select_thresholds(saved, "a")
    assert choice.image == 0.5 and choice.image_source == "pooled (test split, epoch 3; class a has none)"
    assert choice.pixel == 0.5 and "no ground-truth masks" in choice.pixel_source
    never = {"image": None, "pixel": None, "missing": {"image": "the test split has no anomalous image"}}
    with pytest.raises(ThresholdError, match="no anomalous image; calibrate it on good parts "
                       "with `mtad calibrate MODEL --good DIR`, or pass --threshold"):
        select_thresholds(never)
    assert select_thresholds(never, image=0.2).pixel == 0.2


def test_deterministic_switch_turns_on_deterministic_algorithms():
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_demo_says_when_overrides_are_not_applied(tmp_path, monkeypatch, run):
    import mtad.engine.demo as demo
    import mtad.engine.test as engine_test

    out = tmp_path / "demo"
    shutil.copytree(run, out / "run")
    (out / "data").mkdir()
    (out / "data" / "demo_summary.json").write_text("{}")
    monkeypatch.setattr(engine_test, "run_test", lambda *a, **k: {})
    said = []
    demo.run_demo(out, Path("mtad/configs/demo.yaml"), ["train.epochs=3"], log=said.append)
    assert any("overrides train.epochs=3 are not applied" in line for line in said)


@pytest.mark.slow
def test_test_command_takes_a_device(run, tmp_path):
    ok = run_cli("test", "--checkpoint", str(run / "last.pt"), "--device", "cpu",
                 "--out", str(tmp_path / "t"), env_extra={"OMP_NUM_THREADS": "1"})
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("test", "--checkpoint", str(run), "--device", "tpu", "--out", str(tmp_path / "u"))
    assert bad.returncode == 2 and "unknown device 'tpu'" in bad.stderr


@pytest.mark.slow
def test_divergence_on_one_rank_stops_every_rank_with_status_3(data_root, tmp_path):
    script = tmp_path / "diverge.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        import torch
        from mtad.models import MTAD
        from mtad.cli import main
        real, calls = MTAD.loss, [0]
        def loss(self, images):
            calls[0] += 1
            value = real(self, images)
            bad = os.environ["RANK"] == "1" and calls[0] == 2
            return value * float("nan") if bad else value
        MTAD.loss = loss
        sys.exit(main(["train", *{tiny_overrides(data_root, tmp_path / "ddp", epochs=2)!r}]))
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script)], capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode != 0
    assert proc.stderr.count("mtad train: stopped: loss became nan") == 2, proc.stderr[-2000:]
    assert "exitcode  : 3" in proc.stderr or "exit code 3" in proc.stderr.lower(), proc.stderr[-2000:]


@pytest.mark.parametrize("override, message", [
    ("model.encoder=resnet35", "model.encoder: unknown encoder 'resnet35' (did you mean"),
    ("model.depths=[1,1,1,-1]", "model.depths: needs 4 levels of at least 1 block each"),
    ("model.depths=[0,0,0,0]", "model.depths: needs 4 levels of at least 1 block each"),
    ("model.d_state=0", "model.d_state: must be 1 or more"),
])
def test_model_values_are_checked_where_declared(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(None, [override])


def test_a_file_that_torch_did_not_write_is_named_plainly(tmp_path):
    bad = tmp_path / "photo.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(bad)
    with pytest.raises(CheckpointError) as err:
        read_run(bad)
    assert str(err.value) == f"{bad}: cannot read it as an mtad checkpoint: not a file saved by torch"
    assert "weights_only=False" not in str(err.value)
    cut = tmp_path / "last.pt"  # a real checkpoint, cut short
    save_run(RunFile(model={"w": torch.zeros(1000)}, config={}), cut)
    cut.write_bytes(cut.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"last.pt: cannot read it as an mtad checkpoint: "
                                              r"an incomplete torch file \(cut short"):
        read_run(cut)


def test_skip_mode_skips_a_truncated_image_before_training(data_root, tmp_path):
    root = tmp_path / "cut"
    shutil.copytree(data_root, root)
    good = root / "alpha/train/good/000.png"
    good.write_bytes(good.read_bytes()[:300])  # header intact, pixels cut
    from mtad.data import DataWarning

    with pytest.warns(DataWarning, match=r"skipping .*alpha/train/good/000.png: cannot read image"):
        run = train(load_config(None, tiny_overrides(root, tmp_path / "run", epochs=1)
                                + ["data.on_error=skip"]), **quiet)
    assert read_run(run).epoch == 1


@pytest.mark.slow
def test_cli_prints_data_warnings_as_one_line(data_root, tmp_path):
    root = tmp_path / "cut"
    shutil.copytree(data_root, root)
    good = root / "alpha/train/good/000.png"
    good.write_bytes(good.read_bytes()[:300])
    cli = run_cli("train", *tiny_overrides(root, tmp_path / "run", epochs=1), "data.on_error=skip")
    assert cli.returncode == 0, cli.stderr
    lines = [l for l in cli.stderr.splitlines() if "000.png" in l]
    assert lines and all(l.startswith("warning: skipping ") for l in lines), lines
    assert "DataWarning" not in cli.stderr and "train.py" not in cli.stderr


@pytest.mark.slow
def test_predict_of_nothing_exits_1(trained_run, tmp_path):
    (tmp_path / "empty").mkdir()
    cli = run_cli("predict", "--checkpoint", str(trained_run), str(tmp_path / "empty"),
                  "--out", str(tmp_path / "o"))
    assert cli.returncode == 1
    assert "0 images scored: no image files among the inputs; nothing written" in cli.stdout
    assert not (tmp_path / "o").exists()


def test_the_learning_rate_is_a_function_of_the_step():
    """get_lr gives, step for step, the very float the LambdaLR scheduler of runs before
    issue 18 set (so their resumes stay bit-identical): lr, then lr x factor from the
    decay step on."""
    from mtad.engine.train import get_lr

    lr, decay_step, factor = 7e-4, 6, 0.1
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=lr)
    old = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < decay_step else factor)
    for step in range(10):
        assert get_lr(step, lr, decay_step, factor) == opt.param_groups[0]["lr"], step
        opt.step()
        old.step()
    assert get_lr(5, lr, 6, factor) == lr and get_lr(6, lr, 6, factor) == lr * factor

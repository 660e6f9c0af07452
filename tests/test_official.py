"""The authors' network exactly (issue 17): the position embedding's layout, the map
scale, runs written before (run format 1) and `mtad convert` of official checkpoints."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from conftest import recorded_inputs, unpack_test_data
from mtad.calibration import Thresholds
from mtad.cli import main
from mtad.engine.convert import convert_checkpoint, convert_state_dict, mtad_name
from mtad.models import MTAD
from mtad.models.mtrec import sincos_position_embedding
from mtad.runfile import (LEGACY_NECK_BIASES, RUN_FORMAT, CheckpointError, load_run, read_run,
                          read_torch_file, save_run)

DATA = Path(__file__).parent / "data"
LEGACY = DATA / "legacy"
TINY = dict(encoder="efficientnet_lite0", depths=(1, 1, 1, 1), drop_path=0.0)


def official_names() -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of the official state dict (tests/data, from the authors' code)."""
    rows = (DATA / "official_mtad_state_dict.tsv").read_text().splitlines()[1:]
    out = []
    for row in rows:
        name, shape = row.split("\t")
        out.append((name, () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))))
    return out


def official_state(seed: int = 0) -> dict:
    """An official state dict: the TSV's names and shapes, random values (small, and
    positive BatchNorm variances, so that the network it makes computes finite maps)."""
    g = torch.Generator().manual_seed(seed)

    def value(name, shape):
        if name.endswith("num_batches_tracked"):
            return torch.randint(0, 1000, shape, generator=g)
        if name.endswith("running_var"):
            return torch.rand(shape, generator=g) + 0.5
        return 0.05 * torch.randn(shape, generator=g)

    return {name: value(name, shape) for name, shape in official_names()}


def to_official(state: dict) -> dict:
    """The inverse of the conversion (a test helper): mtad's state dict under official names."""
    return {name: state[mtad_name(name)] for name, _ in official_names()}


# -- the network ------------------------------------------------------------------------

def mae_embedding(dim: int, size: int) -> np.ndarray:
    """The authors' get_2d_sincos_pos_embed (MAE), written out in numpy."""
    grid = np.stack(np.meshgrid(np.arange(size, dtype=np.float32),
                                np.arange(size, dtype=np.float32)), 0)  # w goes first

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def test_position_embedding_has_the_official_layout():
    pe = sincos_position_embedding(64, 16)
    half = 32
    # token (row r, column c) is token r * 16 + c; the column's encoding comes first
    assert torch.equal(pe[1, :half], pe[16, half:])      # (0, 1) first half == (1, 0) second
    assert torch.equal(pe[3 * 16 + 5, :half], pe[7 * 16 + 5, :half])  # same column, same half
    assert not torch.equal(pe[1, :half], pe[16, :half])
    # float32 of the same float64 values (MAE's positions are float32 integers: exact)
    assert np.allclose(pe.numpy(), mae_embedding(64, 16), atol=1e-7, rtol=0)
    assert torch.equal(MTAD(**TINY).decoder.levels[0].blocks[0].pos_embed[0],
                       sincos_position_embedding(224, 16))


def upsample_align_corners(a: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling with align_corners=True, in float64 numpy."""
    def axis_weights(n):
        pos = np.linspace(0, n - 1, size)
        lo = np.clip(np.floor(pos).astype(int), 0, max(n - 2, 0))
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, pos - lo

    (r0, r1, wr), (c0, c1, wc) = axis_weights(a.shape[0]), axis_weights(a.shape[1])
    rows = a[r0] * (1 - wr)[:, None] + a[r1] * wr[:, None]
    return rows[:, c0] * (1 - wc) + rows[:, c1] * wc


def test_anomaly_map_has_the_official_scale():
    """Known reconstructions -> the official map: per scale 1 - cos, upsampled, summed,
    divided by len(scales) * sum(weights) = 9, then a Gaussian of sigma 4."""
    model = MTAD(**TINY).eval()
    g = torch.Generator().manual_seed(1)
    features = [torch.randn(2, c, s, s, generator=g) for c, s in ((24, 16), (40, 8), (112, 4))]
    recon = [f + 0.7 * torch.randn(f.shape, generator=g) for f in features]
    model.forward = lambda images: (features, recon)
    maps, scores = model.predict(torch.zeros(2, 3, 64, 64))
    for b in range(2):
        total = 0
        for f, r in zip(features, recon):
            f, r = f[b].double().numpy(), r[b].double().numpy()
            cos = (f * r).sum(0) / (np.linalg.norm(f, axis=0) * np.linalg.norm(r, axis=0))
            total = total + upsample_align_corners(1 - cos, 64)
        official = gaussian_filter(total / 9, sigma=4)
        # float32 against float64: a few ulp of values below 1
        assert np.allclose(maps[b, 0].numpy(), official, atol=1e-6, rtol=0)
        assert scores[b].item() == pytest.approx(official.max(), abs=1e-6)
    model.map_divisor = 1.0  # run format 1: the plain sum, 9x
    assert torch.allclose(model.predict(torch.zeros(2, 3, 64, 64)).anomaly_map, 9 * maps,
                          rtol=1e-5, atol=1e-7)


# -- runs written before run format 2 ------------------------------------------------------

@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """tests/data/legacy with last.pt and model.onnx unpacked (stored gzipped)."""
    return unpack_test_data(LEGACY, tmp_path_factory.mktemp("legacy"))


def assert_same_scores(maps, scores, ref_maps, ref_scores):
    """Bit-identical on the machine that recorded them; elsewhere (another x86-64 ISA:
    AVX2 or AVX-512 float32 kernels) within rounding, 1e-5 of the maps' range. The
    changes this guards against move the maps by far more: a factor 9 (map scale),
    21-42 % (embedding layout), the scale of a bias (neck)."""
    span = float(ref_maps.max() - ref_maps.min())
    assert np.abs(maps - ref_maps).max() <= 1e-5 * span
    assert np.allclose(scores, ref_scores, rtol=1e-5, atol=0)


def test_legacy_run_loads_and_scores_as_before(legacy):
    from mtad.deploy.torch_model import Normalised

    assert "run_format" not in read_torch_file(legacy / "run" / "last.pt", "a run", ValueError)
    saved = read_run(legacy / "run")
    assert saved.run_format == 1
    run = load_run(legacy / "run")
    state = run.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.model.items())
    assert set(state) - set(saved.model) == set(LEGACY_NECK_BIASES)
    assert all(torch.count_nonzero(state[k]) == 0 for k in LEGACY_NECK_BIASES)
    # its saved embedding is the row-first one, kept
    pe = state["decoder.levels.0.blocks.0.pos_embed"][0]
    new = sincos_position_embedding(pe.shape[1], run.config.model.window)
    half = pe.shape[1] // 2
    assert torch.equal(pe, torch.cat([new[:, half:], new[:, :half]], 1))
    assert run.model.map_divisor == 1.0 and run.thresholds == saved.thresholds
    recorded, x = recorded_inputs(LEGACY)
    with torch.no_grad():
        maps, scores = Normalised(run.model).eval()(torch.from_numpy(x))
    assert_same_scores(maps.numpy(), scores.numpy(), recorded["torch_anomaly_map"],
                       recorded["torch_pred_score"])
    # its saved thresholds are on its maps' scale (1/9 of it would be ~0.35)
    assert 0.5 < float(scores.max()) / run.thresholds["image"] < 2


def test_legacy_export_scores_as_before(legacy):
    pytest.importorskip("onnxruntime")
    from mtad.deploy.inferencer import ExportedModel

    recorded, x = recorded_inputs(LEGACY)
    model = ExportedModel(legacy / "export")
    maps, scores = model.predict(x)
    assert_same_scores(maps, scores, recorded["onnx_anomaly_map"], recorded["onnx_pred_score"])
    saved = read_run(legacy / "run")
    # the thresholds object the export exposes holds exactly the values it was saved with
    assert model.thresholds == Thresholds.from_legacy(saved.thresholds)
    assert model.thresholds.pooled.image == saved.thresholds["image"]


def test_new_runs_record_their_run_format(trained_run):
    assert read_torch_file(trained_run / "last.pt", "a run", ValueError)["run_format"] == RUN_FORMAT
    assert load_run(trained_run).model.map_divisor == 9.0
    assert "neck.fuse.0.bias" in read_run(trained_run).model


def test_legacy_run_resumes_in_its_format(trained_run, tmp_path):
    from mtad.engine.train import train

    run_dir = tmp_path / "old"
    shutil.copytree(trained_run, run_dir)
    record = read_run(run_dir)
    names = [n for n, p in load_run(run_dir).model.named_parameters() if p.requires_grad]
    # as mtad before run format 2 wrote it: format 1, no neck biases nor their Adam slots
    keep = [i for i, n in enumerate(names) if n not in LEGACY_NECK_BIASES]
    opt = record.optimizer
    opt["state"] = {keep.index(i): s for i, s in opt["state"].items() if i in keep}
    opt["param_groups"][0]["params"] = list(range(len(keep)))
    for k in LEGACY_NECK_BIASES:
        del record.model[k]
    record.run_format = 1
    record.config["train"]["epochs"] = 3
    save_run(record, run_dir / "last.pt")
    train(None, resume=run_dir, log=lambda *a: None)
    after = read_run(run_dir)
    assert after.epoch == 3 and after.run_format == 1  # keeps its format (map scale)
    assert all(torch.count_nonzero(after.model[k]) > 0 for k in LEGACY_NECK_BIASES)  # trained
    params = dict(load_run(run_dir).model.named_parameters())
    for i, state in after.optimizer["state"].items():  # each moment beside its parameter
        assert state["exp_avg"].shape == params[names[i]].shape
    assert load_run(run_dir).model.map_divisor == 1.0


# -- mtad convert ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def official_model():
    torch.manual_seed(0)
    return MTAD()


def test_conversion_places_every_tensor_once(official_model):
    official = official_state()
    assert len(official) == 797
    target = official_model.state_dict()
    converted = convert_state_dict(official, target)
    assert list(converted) == list(target)                       # every mtad tensor, in order
    assert len({mtad_name(n) for n in official}) == len(official) == len(converted)
    official_model.load_state_dict(converted)                    # strict
    back = to_official(official_model.state_dict())
    assert all(torch.equal(back[n], official[n]) for n in official)


def test_conversion_names_what_does_not_fit(official_model):
    target = official_model.state_dict()
    official = official_state()
    shallower = {k: v for k, v in official.items() if not k.startswith("net_s.levels.0.blocks.2.")}
    with pytest.raises(CheckpointError, match=r"left unfilled: decoder\.levels\.0\.blocks\.2\."):
        convert_state_dict(shallower, target)
    deeper = {**official, **{k.replace("levels.3.blocks.2.", "levels.3.blocks.3."): v
                             for k, v in official.items() if "levels.3.blocks.2." in k}}
    with pytest.raises(CheckpointError, match=r"no rule places: .*levels\.3\.blocks\.3"):
        convert_state_dict(deeper, target)
    narrow = {**official, "fpn.conv21.weight": torch.zeros(64, 128, 1, 1)}
    with pytest.raises(CheckpointError, match=r"fpn\.conv21\.weight \(64, 128, 1, 1\)"):
        convert_state_dict(narrow, target)


def test_convert_writes_a_run_that_test_opens(tmp_path, data_root):
    from mtad.engine.test import run_test

    official = official_state(seed=3)
    source = tmp_path / "net.pth"
    torch.save(official, source)  # the one time the official-size dict is written
    out = convert_checkpoint(source, tmp_path / "converted", ["alpha", "beta"], log=lambda *a: None)
    saved = read_run(out)
    assert saved.epoch == 0 and saved.thresholds is None and not saved.resumable
    assert saved.run_format == RUN_FORMAT and saved.config["data"]["root"] is None
    import hashlib
    assert saved.source["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    run = load_run(out)
    assert run.class_names == ["alpha", "beta"] and run.thresholds is None
    assert run.config.model.encoder == "resnet34" and list(run.config.model.depths) == [3, 4, 6, 3]
    back = to_official(run.model.state_dict())
    assert all(torch.equal(back[n], official[n]) for n in official)
    # evaluating it on labelled data stores F1 thresholds in it (at 64 px, to be quick)
    run_test(out, overrides=[f"data.root={data_root}", "data.image_size=64", "eval.mask_size=64",
                             "data.num_workers=0", "eval.report_images=0"], device="cpu",
             save_thresholds=True, log=lambda *a: None)
    run = load_run(out)
    assert run.thresholds["image"] is not None and set(run.thresholds["classes"]) == {"alpha", "beta"}
    assert run.thresholds["source"].startswith("mtad test")
    again = main(["convert", str(source), "--out", str(out)])
    assert again == 2  # --out must be new or empty


def test_test_save_thresholds_in_the_trainers_format(trained_run, data_root, tmp_path):
    from mtad.engine.test import run_test

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = read_run(run_dir)
    before.thresholds = None
    save_run(before, run_dir / "last.pt")
    results = run_test(run_dir, device="cpu", save_thresholds=True, log=lambda *a: None)
    after = read_run(run_dir)
    assert after.thresholds["image"] == results["thresholds"]["image"]
    assert after.thresholds["classes"] == results["thresholds"]["classes"]
    assert after.model.keys() == before.model.keys() and after.epoch == before.epoch
    assert after.resumable  # the training state is kept
    assert load_run(run_dir).thresholds == after.thresholds


def _convert(tmp_path, capsys, payload=None, raw: bytes | None = None, name="net.pth", extra=()):
    src = tmp_path / name
    if raw is not None:
        src.write_bytes(raw)
    else:
        torch.save(payload, src)
    out = tmp_path / "out"
    code = main(["convert", str(src), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))  # nothing written
    return code, err


def test_convert_refuses_bad_inputs(tmp_path, capsys):
    tiny = MTAD(**TINY).state_dict()
    code, err = _convert(tmp_path, capsys, tiny)
    assert code == 2 and err.count("\n") == 1 and "no rule places: encoder.net" in err
    code, err = _convert(tmp_path, capsys, {"model": tiny, "config": {}})
    assert code == 2 and "mtad checkpoint already" in err
    torch.save({"a": torch.zeros(1000)}, tmp_path / "small.pt")
    whole = (tmp_path / "small.pt").read_bytes()
    code, err = _convert(tmp_path, capsys, raw=whole[: len(whole) // 2])
    assert code == 2 and "cut short" in err
    # ckpt.pth: its numpy scalars are allowed, and its 'net' entry is what is converted
    ckpt = {"net": {"fpn.nothing": torch.zeros(2)}, "metric_recorder": {"mAUROC_sp_max": [
        np.float64(0.5), np.float32(0.25), np.int64(3)]}, "scaler": None, "iter": 7}
    code, err = _convert(tmp_path, capsys, ckpt, name="ckpt.pth")
    assert code == 2 and "'net' entry" in err and "fpn.nothing" in err
    ckpt["metric_recorder"] = {"curve": np.zeros(3)}  # an array: not a scalar, refused by name
    code, err = _convert(tmp_path, capsys, ckpt, name="ckpt.pth")
    assert code == 2 and "net.pth" in err and "numpy" in err
    code, err = _convert(tmp_path, capsys, {"x": torch.zeros(1)}, extra=["--classes", "a,,b"])
    assert code == 2 and "--classes" in err
    assert main(["convert", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "o")]) == 2

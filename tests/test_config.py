"""Run configs: YAML in, dotted overrides, every mistake named."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtad.cli import CONFIG_DIR
from mtad.config import ConfigError, load_config, parse_override


@pytest.mark.parametrize("name", ["mtad_mvtec", "mtad_visa", "mtad_realiad", "demo"])
def test_shipped_configs_validate(name):
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    assert cfg.optim.grad_clip == 5.0 and cfg.optim.decay_at == 0.8


def test_official_recipes():
    mvtec = load_config(CONFIG_DIR / "mtad_mvtec.yaml")
    visa = load_config(CONFIG_DIR / "mtad_visa.yaml")
    assert (mvtec.optim.lr, mvtec.data.batch_size, mvtec.train.epochs) == (5e-4, 8, 500)
    assert (visa.optim.lr, visa.data.batch_size, visa.data.layout) == (1e-3, 16, "visa")
    assert mvtec.optim.weight_decay == 0.01 and mvtec.train.seed == 42
    assert mvtec.model.encoder == "resnet34" and mvtec.model.weights == "pretrained"
    assert load_config(CONFIG_DIR / "mtad_realiad.yaml").eval.streaming


def test_dotted_overrides_are_typed():
    cfg = load_config(CONFIG_DIR / "mtad_mvtec.yaml",
                      ["optim.lr=1e-3", "data.root=/data/x", "data.classes=[bottle, cable]",
                       "train.epochs=3", "model.depths=[1,1,1,1]", "data.layout=realiad",
                       "data.options={views: [C1]}"])
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.data.root == "/data/x" and cfg.data.classes == ["bottle", "cable"]
    assert cfg.train.epochs == 3 and cfg.model.depths == (1, 1, 1, 1)
    assert list(cfg.data.options["views"]) == ["C1"]
    assert parse_override("a.b=") == (["a", "b"], None)


@pytest.mark.parametrize("override, named", [
    ("data.rooot=/x", "data.rooot"),
    ("optimizer.lr=1", "optimizer"),
    ("train.epochs=many", "train.epochs"),
    ("train.deterministic=3", "train.deterministic"),
    ("model.attention=quadratic", "attention"),
    ("model.colour=red", "colour"),
])
def test_bad_overrides_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(CONFIG_DIR / "demo.yaml", [override])


def test_image_size_has_the_networks_minimum():
    # the neck works at 1/32 of the input: below 32 px the model cannot run at all
    with pytest.raises(ConfigError, match=r"data\.image_size: must be 32 or more, got 16"):
        load_config(None, ["data.image_size=16"])
    assert load_config(None, ["data.image_size=32"]).data.image_size == 32


def test_bad_file_names_file_and_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  root: /x\n  batch: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "data.batch" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(None, ["novalue"])


def test_reading_any_shipped_config_imports_neither_torch_nor_timm():
    # A config is plain data: reading one (and printing the README's table of keys)
    # must work where torch and timm cannot be imported at all. A meta-path finder
    # makes any import of them fail; every shipped config is then read.
    configs = sorted(str(p) for p in CONFIG_DIR.glob("*.yaml"))
    assert len(configs) >= 4
    script = textwrap.dedent(f"""
        import sys

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "timm"):
                    raise ImportError(f"blocked: {{name}}")

        sys.meta_path.insert(0, Blocked())
        from mtad.config import config_table, load_config
        for path in {configs!r}:
            load_config(path, ["model.encoder=no_such_encoder"])
        assert "| `model.encoder` |" in config_table()
        import runpy
        runpy.run_module("mtad.config", run_name="__main__", alter_sys=True)  # python -m mtad.config
        print("read", len({configs!r}), "configs")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"read {len(configs)} configs" in proc.stdout and "| `eval.mask_size` |" in proc.stdout


def test_the_old_name_eval_size_is_still_read(tmp_path):
    # eval.size was renamed eval.mask_size; a YAML file, a dotted override and the saved
    # config of an older run (tests/data/legacy) still say eval.size, and mean the same
    import yaml

    from mtad.config import config_from_dict

    old = tmp_path / "old.yaml"
    old.write_text("eval:\n  size: 128\n")
    assert load_config(old).eval.mask_size == 128
    assert load_config(None, ["eval.size=64"]).eval.mask_size == 64
    saved = yaml.safe_load((Path(__file__).parent / "data/legacy/run/config.yaml").read_text())
    assert "size" in saved["eval"] and "mask_size" not in saved["eval"]
    assert config_from_dict(saved).eval.mask_size == saved["eval"]["size"]
    with pytest.raises(ConfigError, match=r"eval\.mask_size: must be greater than 0, got 0"):
        load_config(None, ["eval.size=0"])   # checked as the new key
    with pytest.raises(ConfigError, match=r"eval\.size and eval\.mask_size both given"):
        load_config(None, ["eval.size=64", "eval.mask_size=64"])

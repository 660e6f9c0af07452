"""The README says what the code does: its config-key table is the declarations' own,
and each of its Python snippets runs as written."""
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import save_untrained_run
from mtad.config import config_table, load_config

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def test_the_readme_config_table_is_the_declared_one():
    """Regenerate with `python -m mtad.config` when a key changes."""
    text = README.read_text()
    table = re.search(r"<!-- config-keys[^>]*-->\n(.*?)\n<!-- /config-keys -->", text, re.S)
    assert table is not None, "README lost its config-keys table"
    assert table.group(1) == config_table()
    keys = re.findall(r"^\| `([\w.]+)` \|", table.group(1), re.M)
    defaults = load_config(None).to_dict()
    assert keys == [f"{s}.{k}" for s, section in defaults.items() for k in section]
    assert "| `train.amp` | `none` | none \\| bf16 \\| fp16 |" in table.group(1)
    assert "| `data.image_size` | `256` | >= 32 |" in table.group(1)


@pytest.fixture(scope="module")
def readme_files(tmp_path_factory):
    """What the snippets name: demo_out/run (a tiny run), line3/ (its ONNX export), part.png."""
    from mtad.deploy.export import export_model

    root = tmp_path_factory.mktemp("readme")
    thresholds = {"image": 0.5, "pixel": 0.4, "source": "test split", "epoch": 1,
                  "classes": {"bottle": {"image": 0.45, "pixel": 0.35}}, "missing": {}}
    save_untrained_run(root / "demo_out" / "run", class_names=["bottle"], thresholds=thresholds)
    export_model(root / "demo_out" / "run", "onnx", out=root / "line3", log=lambda *a: None)
    rgb = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "part.png")
    return root


@pytest.mark.parametrize("index", range(3))
def test_each_readme_python_snippet_runs(index, readme_files, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) == 3, "a README Python snippet was added or removed: update this test"
    monkeypatch.chdir(readme_files)
    scope = {"__name__": "readme"}
    exec(compile(blocks[index], f"README.md python block {index + 1}", "exec"), scope)
    anomaly_map, pred_score = scope["anomaly_map"], scope["pred_score"]
    assert anomaly_map.shape[1] == 1 and len(pred_score) == anomaly_map.shape[0]
    assert np.isfinite(np.asarray(pred_score)).all()

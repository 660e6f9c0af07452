"""One path from a photo to the model's input: every consumer hands the model the same
array for the same photo, bit for bit (`mtad.data.transforms.model_input`), and the
training sample is the inference graph's normalised input, bit for bit
(`mtad.data.preprocess.PreProcessor`). No model is trained: a stub records what it gets."""
import os
import types
import warnings

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from mtad.config import load_config
from mtad.data import PreProcessor, model_input, open_split, prepare_image, read_rgb
from mtad.deploy.export import parity_images
from mtad.deploy.inferencer import ExportedModel
from mtad.deploy.torch_model import Normalised
from mtad.engine.predict import predict
from mtad.serve.app import create_app

S = 40   # not a divisor of the photo's sides: the resize interpolates


class Recorder:
    """An `mtad.deploy.Inferencer` that keeps every batch it is given."""
    image_size, class_names, thresholds, info = S, ["part"], None, {"kind": "stub"}

    def __init__(self):
        self.seen = []

    def predict(self, images):
        self.seen.append(np.array(images))
        b = len(images)
        return np.zeros((b, 1, S, S), np.float32), np.zeros(b, np.float32)


def phone_photo(root):
    """A JPEG stored 48 wide x 32 high, tagged "rotate 90 clockwise" (shown 32 x 48), in a
    one-class MVTec layout's test split (train/good holds a plain PNG)."""
    raw = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    raw[2:12, 2:12] = 0
    os.makedirs(root / "part" / "test" / "good")
    os.makedirs(root / "part" / "train" / "good")
    exif = Image.Exif()
    exif[0x0112] = 6
    path = root / "part" / "test" / "good" / "phone.jpg"
    Image.fromarray(raw).save(path, exif=exif, quality=95)
    Image.fromarray(raw).save(root / "part" / "train" / "good" / "0.png")
    return path


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype == np.float32 and a.shape == b.shape and \
        bool((a.view(np.uint32) == b.view(np.uint32)).all())


def test_every_consumer_gives_the_model_the_same_input_for_the_same_photo(tmp_path):
    path = phone_photo(tmp_path / "data")
    x = model_input(path, S)
    assert x.shape == (3, S, S) and x.dtype == np.float32 and x.flags.c_contiguous
    assert 0.0 <= x.min() and x.max() <= 1.0
    upright = read_rgb(path)
    assert upright.shape == (48, 32, 3)       # the orientation is applied: shown portrait
    assert same_bits(model_input(path.read_bytes(), S), x)
    assert same_bits(model_input(upright, S), x)

    # mtad predict
    model = Recorder()
    predict(model, [path], tmp_path / "out", threshold=0.5, pixel_threshold=0.5,
            log=lambda *a: None)
    assert same_bits(model.seen[0][0], x)

    # mtad serve (the upload's bytes)
    model = Recorder()
    client = TestClient(create_app(model, image_threshold=0.5, pixel_threshold=0.5))
    answer = client.post("/api/predict", files=[("files", ("phone.jpg", path.read_bytes()))])
    assert answer.status_code == 200, answer.text
    assert same_bits(model.seen[0][0], x)

    # the exported-model inferencer (torch-free) and the export's parity check
    assert same_bits(ExportedModel.read_images(types.SimpleNamespace(image_size=S), [path])[0], x)
    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", f"data.image_size={S}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the dataset notes the oriented photo
        parity, origin = parity_images(types.SimpleNamespace(config=cfg), n=1)
        sample = open_split(cfg.data, "test")[0]
    assert "test images" in origin and same_bits(parity[0], x)

    # training: the dataset's sample is the inference graph's normalised input, bit for bit
    # (same PreProcessor, same float32 operations), and the formula's value in float32
    graph = Recorder()
    graph.predict = lambda images: graph.seen.append(images.clone()) or \
        types.SimpleNamespace(anomaly_map=None, pred_score=None)
    Normalised(graph)(torch.from_numpy(x[None]))
    assert same_bits(sample["image"].numpy(), graph.seen[0][0].numpy())
    assert same_bits(prepare_image(upright, S)[0].numpy(), sample["image"].numpy())
    mean = np.float32([0.485, 0.456, 0.406])[:, None, None]
    std = np.float32([0.229, 0.224, 0.225])[:, None, None]
    assert same_bits(sample["image"].numpy(), (x - mean) / std)
    assert same_bits(PreProcessor()(torch.from_numpy(x)).numpy(), (x - mean) / std)


def test_serve_sends_class_name_and_still_class_and_reads_either_field(tmp_path):
    client = TestClient(create_app(Recorder(), image_threshold=0.5, pixel_threshold=0.5))
    photo = phone_photo(tmp_path / "data").read_bytes()
    for field in ("class_name", "class"):      # "class": the old name, read for one release
        body = client.post("/api/predict", files=[("files", ("p.jpg", photo))],
                           data={field: "part"}).json()
        one = body["results"][0]
        assert one["status"] == 200 and one["class_name"] == one["class"] == "part"
        assert body["class_name"] == body["class"] == "part"
    assert client.post("/api/predict", files=[("files", ("p.jpg", photo))],
                       data={"class_name": "nope"}).status_code == 422


def test_predict_log_fn_is_the_deprecated_name_of_log(tmp_path):
    path = phone_photo(tmp_path / "data")
    lines = []
    with pytest.warns(DeprecationWarning, match="log="):
        predict(Recorder(), [path], tmp_path / "out", threshold=0.5, pixel_threshold=0.5,
                log_fn=lines.append)
    assert lines and "1 images scored" in lines[-1]


def test_the_predictor_answers_without_http(tmp_path):
    """mtad.serve.predictor holds the model, thresholds and decisions: called directly."""
    from mtad.serve.predictor import Predictor
    from mtad.serve.uploads import Upload
    from mtad.serve.worker import Computed

    path = phone_photo(tmp_path / "data")
    model = Recorder()
    predictor = Predictor(model, image_threshold=0.5, pixel_threshold=0.5)
    chosen, choice = predictor.choose("part")
    uploads = [Upload("p.jpg", bytearray(path.read_bytes())), Upload("bad.png", bytearray(b"x"))]
    prepared = predictor.prepare(uploads)
    assert prepared[1] is None and same_bits(prepared[0][1], model_input(path, S))
    amap, score = model.predict(prepared[0][1][None])
    computed = Computed(amap + 0.75, score + 0.75, wait_ms=0.0, inference_ms=1.0, batch_size=1)
    ok, bad = predictor.answer(uploads, prepared, computed, choice, chosen, 0.0)
    assert ok["verdict"] != "OK" and ok["class_name"] == "part" and (ok["height"], ok["width"]) == (48, 32)
    assert bad["status"] == 415 and "bad.png" in bad["detail"]

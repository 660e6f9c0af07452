"""Run an exported model (`mtad export`) with onnxruntime or OpenVINO; no torch, no timm.

    from mtad.deploy.inferencer import ExportedModel
    model = ExportedModel("runs/x/export-onnx")            # or an OpenVINO export
    images = model.read_images(["part.png"])              # B x 3 x S x S float32 RGB in [0, 1]
    anomaly_map, pred_score = model.predict(images)       # B x 1 x S x S, B
    out = model.classify(images, class_name="bottle")     # + pred_label, pred_mask, thresholds

What it needs: numpy, Pillow and one runtime (``onnxruntime`` or ``openvino``).
"""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np

from mtad.deploy import MODEL_FILES, DeployError, as_model_input

RUNTIMES = ("onnxruntime", "openvino")


def _runtime_missing(name: str, exc: Exception) -> DeployError:
    return DeployError(f"the {name} runtime is not installed ({exc}); install it with "
                       f"`pip install {name}` or `pip install mtad[export]`")


class _OnnxRuntime:
    def __init__(self, file: Path):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise _runtime_missing("onnxruntime", exc) from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(file), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise DeployError(f"{file}: onnxruntime cannot load it ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") \
                from None

    def __call__(self, x: np.ndarray):
        anomaly_map, pred_score = self.session.run(["anomaly_map", "pred_score"], {"images": x})
        return anomaly_map, pred_score


def import_openvino():
    """``import openvino`` without its usage telemetry.

    Importing openvino sends an "import" event to Google Analytics (and its model
    conversion sends more) unless the user opted out; an inspection line must not
    phone home, and tests must not touch the network. openvino falls back to a
    no-op stub when ``openvino_telemetry`` cannot be imported, so it is blocked for
    this process before openvino is first imported.

    Raises:
        DeployError: openvino is not installed.
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)
    try:
        import openvino
    except ImportError as exc:
        raise _runtime_missing("openvino", exc) from None
    return openvino


# OpenVINO's inference-precision hint for each export precision (metadata.json "precision").
# fp32 and int8: f32 for every operator not stored as int8 (the CPU plugin would otherwise
# pick bf16 where the CPU has it, and the selective scan must stay fp32); the quantized
# layers of an int8 export run in int8 whatever the hint. fp16: the device's default
# (None: bf16 with AMX/AVX512-BF16, else f32).
OPENVINO_HINTS = {"fp32": "f32", "int8": "f32", "fp16": None}


def _openvino_reason(exc: Exception) -> str:
    """OpenVINO's message on one line: its "Exception from <file>:<line>:" frames dropped,
    the checks that failed kept (the first line alone names only a source file)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith("Exception from ")]
    return "; ".join(said or lines[:1])


class _OpenVINO:
    def __init__(self, file: Path, precision: str = "fp32",
                 fused: bool = False):
        from mtad.deploy import fused_scan

        import_openvino()
        if precision not in OPENVINO_HINTS:
            raise DeployError(f"{file.parent / 'metadata.json'}: unknown precision {precision!r}; "
                              f"known: {', '.join(OPENVINO_HINTS)}")
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if OPENVINO_HINTS[precision]:
            config["INFERENCE_PRECISION_HINT"] = OPENVINO_HINTS[precision]
        try:
            core = fused_scan.core(fused=fused)   # + the fused scan's extension (--fused-scan)
            self.compiled = core.compile_model(str(file), "CPU", config)
        except Exception as exc:
            raise DeployError(f"{file}: OpenVINO cannot load it ({type(exc).__name__}: "
                              f"{_openvino_reason(exc)})") from None
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()
        self.outputs = (self.compiled.output("anomaly_map"), self.compiled.output("pred_score"))

    def __call__(self, x: np.ndarray):
        with self.lock:
            result = self.request.infer({"images": x})
            return np.array(result[self.outputs[0]]), np.array(result[self.outputs[1]])


def read_metadata(folder: Path) -> dict:
    """An export folder's metadata.json, checked for the input size.

    Raises:
        DeployError: no metadata.json, or one that is not an export's.
    """
    meta_file = Path(folder) / "metadata.json"
    if not meta_file.is_file():
        raise DeployError(f"{folder} is not an mtad export: it holds no metadata.json "
                          "(make one with `mtad export RUN`)")
    try:
        meta = json.loads(meta_file.read_text())
        int(meta["input"]["image_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        what = f"key {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise DeployError(f"{meta_file}: not a valid mtad export metadata file ({what})") \
            from None
    return meta


class ExportedModel:
    """An export folder behind the `mtad.deploy.Inferencer` interface.

    Args:
        path: a folder written by `mtad export` (metadata.json + model.onnx, or
            metadata.json + model.xml/model.bin).
        runtime: "onnxruntime" or "openvino"; None picks by the files present
            (model.xml: OpenVINO, model.onnx: onnxruntime). OpenVINO also runs a
            model.onnx; onnxruntime cannot run model.xml.

    Attributes:
        image_size: S, the side the model takes (int, px).
        batch: the fixed batch size of the export, or None (any batch).
        class_names, thresholds (format: `mtad.postprocess`), info (metadata.json
        with ``kind``, ``runtime`` and ``path`` added), runtime, precision (metadata's
        "fp32", "int8" or "fp16": OpenVINO runs each at its own, see OPENVINO_HINTS).

    Raises:
        DeployError: the folder, metadata.json or the model file is missing or
            unreadable, or the runtime is unknown or not installed.
    """

    def __init__(self, path: str | Path, runtime: str | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DeployError(f"{self.path}: no such export folder")
        meta = read_metadata(self.path)
        size = int(meta["input"]["image_size"])
        self.runtime = self._pick_runtime(runtime)
        file = self.path / MODEL_FILES["openvino" if self.runtime == "openvino" and
                                       (self.path / MODEL_FILES["openvino"]).is_file() else "onnx"]
        if not file.is_file():
            raise DeployError(f"{self.path}: the model file {file.name} is missing")
        self.image_size = size
        batch = meta["input"].get("batch", "dynamic")
        self.batch = None if batch in (None, "dynamic") else int(batch)
        self.class_names = list(meta.get("class_names") or [])
        exported_from = meta.get("source") or {}
        from mtad.calibration import model_thresholds

        # calibration.json's active version for this checkpoint, else metadata.json's
        self.checkpoint_sha256 = exported_from.get("sha256")
        self.thresholds = model_thresholds(self.path, meta.get("thresholds"),
                                           self.checkpoint_sha256, _warn)
        self.info = {**meta, "kind": "export", "runtime": self.runtime, "path": str(self.path),
                     "model_file": str(file), "source": str(self.path),
                     "epoch": exported_from.get("epoch"), "exported_from": exported_from}
        self.precision = str(meta.get("precision") or "fp32")
        if self.runtime == "openvino":
            from mtad.deploy.fused_scan import FUSED

            self._run = _OpenVINO(file, self.precision,
                                  fused=(meta.get("graph") or {}).get("scan") == FUSED)
        else:
            self._run = _OnnxRuntime(file)

    def _pick_runtime(self, runtime: str | None) -> str:
        has = {fmt: (self.path / name).is_file() for fmt, name in MODEL_FILES.items()}
        if runtime is None:
            if has["openvino"]:
                return "openvino"
            if has["onnx"]:
                return "onnxruntime"
            raise DeployError(f"{self.path}: the export holds no model file "
                              f"({MODEL_FILES['onnx']} or {MODEL_FILES['openvino']})")
        key = str(runtime).strip().lower()
        if key not in RUNTIMES:
            raise DeployError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
        if key == "onnxruntime" and not has["onnx"]:
            raise DeployError(f"{self.path}: onnxruntime needs {MODEL_FILES['onnx']}, "
                              f"which this export does not hold (use runtime='openvino')")
        return key

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps and image scores.

        Args:
            images: B x 3 x S x S RGB, S = ``image_size``: uint8 (0..255), uint16
                (0..65535) or float in [0, 1], as `mtad.deploy.as_model_input` takes
                them (the contract of every mtad model). A fixed-batch export takes
                any B: images go through in batches of its size (the last one padded).

        Returns:
            (anomaly_map B x 1 x S x S float32, >= 0; pred_score B float32, each map's max).

        Raises:
            DeployError: ``images`` is not B x 3 x S x S, of a dtype not taken, or
                float outside [0, 1] (see `mtad.deploy.as_model_input`).
        """
        x = as_model_input(images, self.image_size)
        s = self.image_size
        if self.batch is None:
            anomaly_map, pred_score = self._run(x)
            return np.asarray(anomaly_map, np.float32), np.asarray(pred_score, np.float32)
        maps, scores, n = [], [], len(x)
        for start in range(0, n, self.batch):
            part = x[start:start + self.batch]
            k = len(part)
            if k < self.batch:
                part = np.concatenate([part, np.zeros((self.batch - k, 3, s, s), np.float32)])
            m, sc = self._run(part)
            maps.append(m[:k]), scores.append(sc[:k])
        return (np.concatenate(maps).astype(np.float32, copy=False),
                np.concatenate(scores).astype(np.float32, copy=False))

    def read_images(self, paths) -> np.ndarray:
        """Image files (or their bytes) -> B x 3 x S x S float32 RGB in [0, 1], each
        through `mtad.data.transforms.model_input`, the path training takes.

        Raises:
            mtad.data.DataError: a file that cannot be read as an image.
        """
        from mtad.data.transforms import model_input

        return np.stack([model_input(p, self.image_size) for p in paths])

    def classify(self, images: np.ndarray, class_name: str | None = None,
                 image_threshold: float | None = None,
                 pixel_threshold: float | None = None) -> dict:
        """`predict` plus decisions (`mtad.postprocess.decide`, at the model's size):
        ``anomaly_map``, ``pred_score``, ``verdict`` (B strings "OK" / "REVIEW" /
        "NG"), ``pred_label`` (B bool: verdict is not OK), ``pred_mask`` (B x 1 x S x S
        bool; empty for OK, never empty otherwise) and ``thresholds`` (the values
        used, their comparison rule and where each came from).

        ``class_name`` picks that class's calibrated thresholds, else the pooled ones
        (see `mtad.postprocess.select_thresholds`, which raises ThresholdError for an
        unknown class or when no image threshold exists).
        """
        from mtad.postprocess import decide, select_thresholds

        choice = select_thresholds(self.thresholds, class_name, image_threshold,
                                   pixel_threshold, self.class_names)
        anomaly_map, pred_score = self.predict(images)
        decisions = [decide(m[0], s, choice, outline_px=1) for m, s in
                     zip(anomaly_map, pred_score.tolist())]
        return {"anomaly_map": anomaly_map, "pred_score": pred_score,
                "verdict": np.array([d.verdict for d in decisions]),
                "pred_label": np.array([d.pred_label for d in decisions], bool),
                "pred_mask": np.stack([d.pred_mask for d in decisions])[:, None]
                if decisions else np.zeros(anomaly_map.shape, bool),
                "thresholds": choice.as_dict()}


def _warn(message: str) -> None:
    import logging

    logging.getLogger("mtad").warning(message)

"""INT8 and fp16 exports, and the accuracy check that replaces parity for them.

    export_model("runs/x", "openvino", precision="int8", max_drop=0.005)

What is INT8 (`quantize_onnx`, `quantize_openvino`): the inputs of every MatMul,
Gemm and Conv whose second input is a weight (a constant: the convolutions of the
encoder, neck and decoder, the linear layers of the Mamba and attention blocks) are
quantized, weights per output channel (symmetric int8), activations per tensor
(NNCF's defaults). Everything else stays fp32, the anomaly map's upsampling and
Gaussian smoothing included (an 8-bit map would tie pixel scores):
Add and Mul (which quantization tools also quantize by default) carry the selective
scan's recurrence ``h_t = exp(dt A) h_{t-1} + dt B u``, whose state decays
multiplicatively over 256 steps, so rounding it to 8 bits every step would make
another model; and MatMuls of two computed tensors (the scan's read-out ``C_t . h_t``,
attention's products) have no weight to quantize and read the state. These weighted
layers are where the arithmetic is (benchmarks/README.md: MatMul and Conv are half of
the official model's time in onnxruntime).

One weighted layer stays fp32 as well (``FP32_LAYERS``): each Mamba mixer's causal
depthwise conv1d (k = 3, a negligible share of the arithmetic). Measured on the trained
demo run (benchmarks/README.md, "INT8 and fp16"): with it INT8, OpenVINO 2026.4's CPU
plugin lost 0.11-0.23 mean image AUROC, differently on each compilation of the same IR,
while the same FakeQuantize parameters evaluated as plain fp32 arithmetic lost nothing;
with it fp32, the INT8 model is within the budget and deterministic.

How: NNCF, statistics from ``CALIBRATION_IMAGES`` (300) images (its OpenVINO backend
for OpenVINO IR, its ONNX path for onnxruntime, measured against onnxruntime's own static
QDQ quantizer in benchmarks/README.md). Both exports are accuracy-aware, against the
check's images (`CheckData`: the run's test split, scored once by torch fp32):

- OpenVINO: `nncf.quantize_with_accuracy_control`. NNCF quantizes plainly and validates
  the fp32 and INT8 models; when INT8 misses the budget it ranks the quantized layers by
  how far their INT8 output moves from fp32 and returns them to fp32 one at a time, up
  to ``max_reverted`` (``MAX_REVERTED``, 8), validating after each. Ranking compiles the
  model once per layer: 2-3 minutes on the tiny test model with the fused scan
  (`--fused-scan`), past 15 minutes with the standard scan's ~10,000 nodes.
- onnxruntime: `nncf.quantize`, then `_group_search`: the same loop over groups of
  layers by module path (`layer_groups`, at most ``GROUP_SIZE`` each), one onnxruntime
  session per group. NNCF's own loop on its ONNX backend, one session of the whole graph
  per layer, had not finished after 21 minutes on the demo run.

``max_reverted`` 0 is plain post-training quantization. Whatever the search gives,
`check_accuracy` is the gate.

fp16 (OpenVINO only): weights stored as fp16 (``compress_to_fp16``); the CPU plugin
computes at its default inference precision (bf16 where the CPU has AMX/AVX512-BF16,
else f32); the same accuracy check applies.
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from mtad.deploy import DeployError

PRECISIONS = ("fp32", "int8", "fp16")
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
CALIBRATION_IMAGES = 300
MAX_DROP = 0.005            # default --max-drop: mean image and pixel AUROC
MAX_CLASS_DROP = 0.02       # any one class, image or pixel AUROC
SYNTHETIC_CHECK_IMAGES = 48  # good + synthetic-defect images when the test split is unreachable
CHECK_METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")
MAX_REVERTED = 8            # default --max-reverted: layers (openvino) or layer groups (onnx) made fp32
RANKING_IMAGES = 24         # images NNCF ranks the layers on (output distance to fp32)
# NNCF's OverflowFix "enable": every INT8 layer's weights on half the int8 range (7 bits),
# so that int8 kernels without VNNI (AVX2, AVX-512 before VNNI: u8 x s8 pairs summed into
# int16 with saturation) cannot overflow. NNCF's default, "first_layer_only", failed the
# demo run's check on an AVX2 machine (benchmarks/README.md, "INT8 and fp16"); an export
# must hold on whatever CPU the line has
OVERFLOW_FIX = "enable"
RANKING_LOG_EVERY = 25      # a log line each time NNCF has scored this many layer groups
# weighted layers kept fp32 (ONNX node-name fragments): Mamba's causal depthwise conv1d,
# whose INT8 kernel in OpenVINO's CPU plugin breaks the maps (module docstring)
FP32_LAYERS = ("/mamba/conv1d/",)


def check_precision(fmt: str, precision: str) -> str:
    """The precision, lower case; fp16 is for OpenVINO only.

    Raises:
        DeployError: unknown precision, or fp16 with onnx.
    """
    p = str(precision).strip().lower()
    if p not in PRECISIONS:
        raise DeployError(f"unknown --precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if p == "fp16" and fmt == "onnx":
        raise DeployError("--precision fp16 is for --format openvino only (onnxruntime's CPU "
                          "provider has no fp16 kernels); use int8 or fp32 for onnx")
    return p


def import_nncf():
    """``import nncf`` without its usage telemetry (it reports through
    openvino_telemetry, blocked for the process as in `import_openvino`).

    Raises:
        DeployError: nncf is not installed.
    """
    from mtad.deploy.inferencer import import_openvino

    import_openvino()
    if "nncf" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import nncf
    except ImportError as exc:
        raise DeployError(f"INT8 export needs NNCF, which is not installed ({exc}); install it "
                          "with `pip install nncf` or `pip install mtad[export]`") from None
    import logging

    logging.getLogger("nncf").setLevel(logging.ERROR)   # progress bars and notes: not ours
    return nncf


def tool_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("nncf", "openvino", "onnxruntime", "onnx"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ------------------------------------------------------------------ calibration images
def _sample_round_robin(by_class: dict[str, list], n: int, seed: int = 0) -> list:
    """Up to n items, as even over the classes as they allow (seeded shuffle in each)."""
    rng = np.random.default_rng(seed)
    queues = {c: [items[i] for i in rng.permutation(len(items))] for c, items in by_class.items()}
    picked = []
    while len(picked) < n and any(queues.values()):
        for c in sorted(queues):
            if queues[c] and len(picked) < n:
                picked.append(queues[c].pop())
    return picked


def calibration_images(run, folder=None, n: int = CALIBRATION_IMAGES) -> tuple[list, dict]:
    """The quantization statistics' images: a list of S x S x 3 uint8 arrays and where
    they came from ({"source", "count", "classes"}).

    From ``folder`` (every image file under it, sampled to n) when given, else n of
    the run's training images sampled over every class (round-robin, seed 0).

    Raises:
        DeployError: ``folder`` is not a folder or holds no image; no folder given and
            the run's training data is not reachable.
    """
    from mtad.data.imageio import is_image_file
    from mtad.data.transforms import input_rgb, model_input

    size = int(run.config.data.image_size)
    if folder is not None:
        root = Path(folder)
        if not root.is_dir():
            raise DeployError(f"--quantize-images {root}: no such folder")
        files = sorted(str(Path(d) / f) for d, _, names in os.walk(root) for f in names
                       if is_image_file(f))
        if not files:
            raise DeployError(f"--quantize-images {root}: the folder holds no image files")
        files = _sample_round_robin({"all": files}, n)
        images = [input_rgb(model_input(f, size)) for f in files]   # uint8: 1/4 the memory
        return images, {"source": str(root), "count": len(images), "classes": None,
                        "class_of": ["images"] * len(images)}
    from mtad.data.dataset import open_split

    try:
        if not run.config.data.root:
            raise FileNotFoundError("the run config names no data.root")
        ds = open_split(run.config.data, "train")
    except Exception as exc:
        raise DeployError(f"the run's training images are not reachable ({type(exc).__name__}: "
                          f"{exc}); give --quantize-images DIR (normal images of the product)") \
            from None
    by_class: dict[str, list] = {}
    for r in ds.records:
        by_class.setdefault(r.class_name, []).append(r)
    picked = _sample_round_robin(by_class, n)
    images = [input_rgb(model_input(r.image_path, size, run.config.data.exif_orientation))
              for r in picked]
    counts = {c: sum(r.class_name == c for r in picked) for c in sorted(by_class)}
    return images, {"source": f"training split of {ds.root}", "count": len(images),
                    "classes": counts, "class_of": [r.class_name for r in picked]}


def _unit(image: np.ndarray) -> np.ndarray:
    """S x S x 3 uint8 -> 1 x 3 x S x S float32 in [0, 1]."""
    from mtad.data.transforms import to_unit_float

    return np.ascontiguousarray(to_unit_float(image[None]))


# ------------------------------------------------------------------ quantizers
NETWORK_SCOPE = "/model/"   # the traced MTAD (mtad.deploy.torch_model.Normalised's `model`)


def weighted_nodes(model) -> tuple[list[str], list[str]]:
    """Names of the MatMul/Gemm/Conv nodes of an exported ONNX graph to quantize: inside
    the network (``NETWORK_SCOPE``) with a constant second input (a weight), not one of
    ``FP32_LAYERS``; and of the others, kept fp32: products of two computed tensors (the
    scan's read-out, attention), ``FP32_LAYERS`` (Mamba's conv1d) and the anomaly map's
    Gaussian smoothing, which would otherwise round the output map to 256 levels."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    quantized, kept = [], []
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS:
            weighted = len(node.input) > 1 and node.input[1] in constants
            inside = node.name.startswith(NETWORK_SCOPE)
            listed = any(part in node.name for part in FP32_LAYERS)
            (quantized if weighted and inside and not listed else kept).append(node.name)
    return quantized, kept


def _ignored_scope(nncf, all_types, kept: list[str], quantized_types):
    return nncf.IgnoredScope(names=list(kept), types=sorted(set(all_types) - set(quantized_types)),
                             validate=False)


def _nncf_quantize(nncf, model, images: list, scope, control, infer) -> tuple[object, dict]:
    """``nncf.quantize`` (plain post-training) when ``control`` is None, else
    ``nncf.quantize_with_accuracy_control`` against the check's budget.

    ``control``: (CheckData, max_reverted, log). NNCF quantizes as plainly, validates the fp32
    and the INT8 model on the check's images, and while the INT8 one misses the budget
    returns the layer whose INT8 output moves most from fp32 (ranked on ``RANKING_IMAGES``
    images) to fp32, up to ``max_reverted`` layers, validating after each. The figure it
    compares is `CheckData.failures`'s excess (at most ``max_drop`` exactly when the
    budget holds), computed against the torch fp32 figures. The validation function
    returns a figure per image as well (NNCF's "metric mode", the one its ONNX backend
    supports): minus the normalised squared error of its outputs to the torch fp32 ones,
    which the ranking averages over its images (as NNCF's own OpenVINO-only ranking does
    on outputs). ``infer``: NNCF's model for inference -> a function x -> (anomaly_map,
    pred_score).
    """
    from nncf.quantization.advanced_parameters import (AdvancedAccuracyRestorerParameters,
                                                       AdvancedQuantizationParameters,
                                                       OverflowFix)

    calib = nncf.Dataset(images, lambda im: {"images": _unit(im)})
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(OVERFLOW_FIX))
    if control is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _nncf_call(nncf.quantize, model, calib, subset_size=len(images),
                              ignored_scope=scope, advanced_parameters=advanced), {}

    data, max_reverted, log = control
    seen = {"validations": 0, "excess": [], "ranked": 0}
    index = {id(it): i for i, it in enumerate(data.items)}   # NNCF hands back our items

    def validate(compiled, items):
        items = list(items)
        run = infer(compiled)
        outs = [run(it[2]) for it in items]
        # per item, higher is better: minus the outputs' normalised squared error to fp32
        closeness = [-_nmse(out, data.fp32[index[id(it)]]) for it, out in zip(items, outs)]
        if len(items) != len(data.items):   # ranking subsets (and NNCF's one-image probe):
            seen["ranked"] += len(items) > 1      # no per-class AUROC of a few images
            if seen["ranked"] and seen["ranked"] % RANKING_LOG_EVERY == 0:
                log(f"NNCF's ranking: {seen['ranked']} layer groups scored")
            return float(np.mean(closeness)), closeness
        _, excess = data.failures(data.fp32_results, data.results(outs))
        seen["validations"] += 1
        seen["excess"].append(round(excess, 6))
        if seen["validations"] == 2 and excess > data.max_drop:   # fp32, then INT8
            log(f"int8 misses the budget (excess {excess:.4f} > {data.max_drop:g}): NNCF's "
                f"accuracy-aware loop now ranks the quantized layers (one model compilation "
                f"each: minutes to hours on a CPU) and returns up to {max_reverted} to fp32; "
                "--max-reverted 0 skips it")
        # 1 - excess: NNCF's absolute drop is a difference (the offset cancels), and it
        # also divides by the fp32 figure for its log, which must not be 0
        return 1.0 - excess, closeness

    validation = nncf.Dataset(data.items, lambda it: {"images": it[2]})
    params = AdvancedAccuracyRestorerParameters(
        max_num_iterations=max_reverted,
        # fewer than all: `validate` tells a ranking subset from the full check by its size
        ranking_subset_size=max(1, min(RANKING_IMAGES, len(data.items) - 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = _nncf_call(nncf.quantize_with_accuracy_control, model, calib, validation, validate,
                       max_drop=data.max_drop, drop_type=nncf.DropType.ABSOLUTE,
                       subset_size=len(images), ignored_scope=scope,
                       advanced_quantization_parameters=advanced,
                       advanced_accuracy_restorer_parameters=params)
    return q, {"max_reverted": max_reverted, "validations": seen["validations"],
               "excess_per_validation": seen["excess"], "ranking_images": params.ranking_subset_size}


def _nmse(out, ref) -> float:
    """Mean over (anomaly_map, pred_score) of ||out - ref||^2 / ||ref||^2 (0 when equal)."""
    errors = []
    for a, r in zip(out, ref):
        a, r = np.asarray(a, np.float64), np.asarray(r, np.float64)
        errors.append(float(np.sum((a - r) ** 2) / max(float(np.sum(r ** 2)), 1e-30)))
    return float(np.mean(errors))


def _nncf_call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with NNCF's own failures as one-line DeployErrors (ours,
    raised inside the validation function, pass through)."""
    try:
        return fn(*args, **kwargs)
    except DeployError:
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        raise DeployError(f"NNCF could not quantize the model ({type(exc).__name__}: "
                          f"{lines[-1] if lines else ''})") from exc


def _ort_infer(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3      # errors only
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda x: tuple(sess.run(None, {"images": x}))


def _ov_infer(compiled):
    def run(x):
        out = compiled(x)
        return out[0], out[1]
    return run


def _search_record(found: dict, quantized: list, fp32_now: list) -> dict:
    if not found:
        return {"accuracy_aware": None}
    return {"accuracy_aware": {**found, "reverted_to_fp32": fp32_now,
                               "int8_layers": len(quantized) - len(fp32_now)}}


# ------------------------------------------------------------------ onnxruntime's search
GROUP_SIZE = 16   # at most this many INT8 layers in one group of the onnx search


def layer_groups(names: list[str], max_size: int = GROUP_SIZE) -> dict[str, list[str]]:
    """The INT8 layers in groups by module path, for the onnx accuracy-aware search: the
    ONNX names' components (``/model/decoder/levels.1/blocks.0/mamba/in_proj/MatMul``)
    from ``/model/<part>`` down, a group split by its next component while it holds more
    than ``max_size`` layers and can be split. Returns {path prefix: names}, in graph order."""
    out: dict[str, list[str]] = {}

    def split(items: list[str], depth: int):
        keys: dict[str, list[str]] = {}
        for n in items:
            keys.setdefault("/".join(n.split("/")[:depth]), []).append(n)
        for key, members in keys.items():
            deeper = any(len(m.split("/")) > depth + 1 for m in members)
            if len(members) > max_size and deeper:
                split(members, depth + 1)
            else:
                out[key] = members

    split(list(names), 3)
    return out


def revert_to_fp32(model, names, fp32) -> object:
    """A copy of the QDQ ONNX ``model`` in which the nodes ``names`` compute in fp32: an
    activation input DequantizeLinear(QuantizeLinear(x)) becomes x, and every input that
    is a constant in ``fp32`` (the graph that was quantized) takes its exported value
    back, in the node and, after a MatMul, in the Add of its bias: NNCF's ONNX backend
    stores a weight as int8 under its DequantizeLinear, and its bias correction changed
    the biases. Shape nodes, which read no values, take the tensor before its Q/DQ; the
    Q/DQ nodes and initializers nothing reads any more are removed. The other layers stay
    INT8, also where they shared a quantized activation with a reverted one; a name not
    in ``fp32`` stays as it is."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    producer = {o: n for n in m.graph.node for o in n.output}

    def before_qdq(name):
        """x when ``name`` is DequantizeLinear(QuantizeLinear(x)), else None."""
        dq = producer.get(name)
        qn = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" \
            else None
        return qn.input[0] if qn is not None and qn.op_type == "QuantizeLinear" else None

    wanted = set(names)
    twins = {n.name: n for n in fp32.graph.node}
    values = {t.name: t for t in fp32.graph.initializer}
    values.update({n.output[0]: n.attribute[0].t for n in fp32.graph.node
                   if n.op_type == "Constant" and len(n.attribute) == 1})
    readers = {}
    for n in m.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    initializers = {t.name: t for t in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type == "Shape" and before_qdq(node.input[0]) is not None:
            node.input[0] = before_qdq(node.input[0])
        if node.name not in wanted or node.name not in twins:
            continue
        for i, name in enumerate(node.input):
            if before_qdq(name) is not None:
                node.input[i] = before_qdq(name)
        biases = [r for o in node.output for r in readers.get(o, [])
                  if r.op_type == "Add"] if node.op_type == "MatMul" else []
        for n in [node] + biases:
            twin = twins.get(n.name)
            if twin is None or len(twin.input) != len(n.input):
                continue
            for i, source in enumerate(twin.input):
                if source not in values:
                    continue
                n.input[i] = source
                if source in producer:        # still made by a Constant node here
                    continue
                if source not in initializers:
                    initializers[source] = m.graph.initializer.add()
                initializers[source].CopyFrom(values[source])
                initializers[source].name = source
    while True:   # drop the Q/DQ nodes left without readers
        read = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
        dead = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            m.graph.node.remove(n)
    unused = [t for t in m.graph.initializer if t.name not in read]   # int8 weights, scales
    for t in unused:
        m.graph.initializer.remove(t)
    return m


def _group_search(model, fp32, quantized: list[str], control) -> tuple[object, dict]:
    """onnxruntime's accuracy-aware search: return whole layer groups (`layer_groups`) to
    fp32 until the check's budget holds.

    NNCF's own loop (what OpenVINO gets) ranks one layer at a time, one onnxruntime
    session of the whole graph each: past 21 minutes on the demo run's 224 INT8 layers
    (benchmarks/README.md). Here: validate the INT8 model on the check's images; while it
    misses, rank the groups by the normalised squared error to fp32 of the outputs with
    that group alone reverted (on ``RANKING_IMAGES`` images spread over the check), then
    revert them cumulatively in that order, validating after each, up to
    ``max_reverted`` groups. Returns (model, record as NNCF's loop's)."""
    data, max_reverted, log = control
    seen = {"validations": 0, "excess": []}

    def run_on(m, items):
        infer = _ort_infer(m)
        return [infer(it[2]) for it in items]

    def validate(m):
        _, excess = data.failures(data.fp32_results, data.results(run_on(m, data.items)))
        seen["validations"] += 1
        seen["excess"].append(round(excess, 6))
        return excess

    groups = layer_groups(quantized)
    record = {"method": "layer groups", "max_reverted": max_reverted, "groups": len(groups)}
    excess = validate(model)
    reverted: list[str] = []
    if excess > data.max_drop and max_reverted:
        n_rank = max(1, min(RANKING_IMAGES, len(data.items)))
        picks = np.linspace(0, len(data.items) - 1, n_rank).round().astype(int)
        ranking = [data.items[i] for i in picks]
        log(f"int8 misses the budget (excess {excess:.4f} > {data.max_drop:g}): ranking "
            f"{len(groups)} layer groups on {n_rank} images (one onnxruntime session each), "
            f"then returning up to {max_reverted} to fp32; --max-reverted 0 skips it")
        score = {}
        for k, (key, names) in enumerate(groups.items(), 1):
            outs = run_on(revert_to_fp32(model, names, fp32), ranking)
            score[key] = float(np.mean([_nmse(o, data.fp32[i]) for o, i in zip(outs, picks)]))
            if k % 5 == 0 or k == len(groups):
                log(f"ranked {k} of {len(groups)} layer groups")
        order = sorted(groups, key=score.get)
        for key in order[:max_reverted]:
            reverted.append(key)
            model = revert_to_fp32(model, groups[key], fp32)     # on top of those before
            excess = validate(model)
            log(f"{key} ({len(groups[key])} layers) to fp32: excess {excess:.4f}")
            if excess <= data.max_drop:
                break
        record["ranking_images"] = n_rank
        record["ranking"] = {key: round(score[key], 8) for key in order}
    record.update(validations=seen["validations"], excess_per_validation=seen["excess"],
                  reverted_groups=reverted)
    return model, record


def quantize_onnx(onnx_path: Path, images: list, out_path: Path, control=None) -> dict:
    """INT8 QDQ ONNX (for onnxruntime) from the fp32 graph: NNCF's ONNX path, plain
    post-training quantization of the weighted MatMul/Gemm/Conv (see the module docstring);
    then, when ``control`` = (CheckData, max_reverted, log) is given, `_group_search`
    returns whole layer groups to fp32 while the check's budget is missed. Returns what
    was done: tool, quantized_nodes, fp32_nodes_kept, accuracy_aware (None without
    ``control``; else the search's record, with the scope's layers it left fp32)."""
    import onnx

    nncf = import_nncf()
    model = onnx.load(str(onnx_path))
    quantized, kept = weighted_nodes(model)
    scope = _ignored_scope(nncf, {n.op_type for n in model.graph.node}, kept, QUANTIZED_OPS)
    q, found = _nncf_quantize(nncf, model, images, scope, None, _ort_infer)
    if control is not None:
        q, found = _group_search(q, model, quantized, control)
    onnx.save(q, str(out_path))
    dq = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    int8 = {n.name for n in q.graph.node if n.op_type in QUANTIZED_OPS and dq & set(n.input)}
    return {"tool": "nncf (onnx backend)", "quantized_nodes": len(quantized),
            "fp32_nodes_kept": len(kept),
            **_search_record(found, quantized, [n for n in quantized if n not in int8])}


def quantize_openvino(onnx_path: Path, images: list, folder: Path, control=None) -> dict:
    """INT8 OpenVINO IR (model.xml/.bin) from the fp32 ONNX graph with NNCF's
    OpenVINO backend, the weighted MatMul/Conv only (Gemm becomes MatMul in IR);
    accuracy-aware when ``control`` = (CheckData, max_reverted, log) is given. Returns what
    was done, as `quantize_onnx`."""
    import onnx

    from mtad.deploy import MODEL_FILES, fused_scan
    from mtad.deploy.inferencer import import_openvino

    nncf = import_nncf()
    ov = import_openvino()
    quantized, kept = weighted_nodes(onnx.load(str(onnx_path), load_external_data=False))
    model = fused_scan.core(onnx_path).read_model(str(onnx_path))
    names = {op.get_friendly_name() for op in model.get_ops()}
    # OpenVINO's ONNX reader splits a Conv with a bias into a Convolution named
    # "<name>/WithoutBiases" and an Add named "<name>": ignore the Convolution
    renamed = {n: [m for m in (n, f"{n}/WithoutBiases") if m in names] for n in kept}
    missing = [n for n in kept if not renamed[n] and n.startswith(NETWORK_SCOPE)]
    if missing:   # the ignored scope must hold, or the scan's read-out would be quantized
        raise DeployError(f"OpenVINO renamed {len(missing)} of the ONNX nodes kept in fp32 "
                          f"(e.g. {missing[0]!r}); cannot set NNCF's ignored scope")
    ov_ops = ("MatMul", "Convolution", "GroupConvolution")
    # outside the network (the map's smoothing) by OpenVINO's names, which may differ there
    kept = [m for n in kept for m in renamed[n]] + [
        op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in ov_ops
        and not op.get_friendly_name().startswith(NETWORK_SCOPE)]
    scope = _ignored_scope(nncf, {op.get_type_name() for op in model.get_ops()}, kept, ov_ops)
    q, found = _nncf_quantize(nncf, model, images, scope, control, _ov_infer)
    ov.save_model(q, str(folder / MODEL_FILES["openvino"]), compress_to_fp16=False)
    fed = {t.get_node().get_friendly_name() for op in q.get_ops()
           if op.get_type_name() == "FakeQuantize" for t in op.output(0).get_target_inputs()}
    fp32_now = [n for n in quantized if not {n, f"{n}/WithoutBiases"} & fed]
    return {"tool": "nncf (openvino backend)", "quantized_nodes": len(quantized),
            "fp32_nodes_kept": len(kept), **_search_record(found, quantized, fp32_now)}


def compress_fp16(onnx_path: Path, folder: Path) -> dict:
    """OpenVINO IR with fp16 weights (OpenVINO's ``compress_to_fp16``)."""
    from mtad.deploy import MODEL_FILES, fused_scan
    from mtad.deploy.inferencer import import_openvino

    ov = import_openvino()
    model = fused_scan.core(onnx_path).read_model(str(onnx_path))
    ov.save_model(model, str(folder / MODEL_FILES["openvino"]), compress_to_fp16=True)
    return {"tool": "openvino save_model(compress_to_fp16=True)"}


# ------------------------------------------------------------------ the accuracy check
@dataclass
class CheckData:
    """The accuracy check's images, scored once by the fp32 model: shared by NNCF's
    accuracy-aware loop (`quantize_openvino`, `quantize_onnx`) and the final gate
    (`check_accuracy`).

    Attributes:
        items: (class_name, gt_label, image 1 x 3 x S x S float32 in [0, 1],
            gt_mask M x M bool, or None for a split without masks), one per image.
        fp32: (anomaly_map 1 x 1 x S x S, pred_score (1,)) of the fp32 model per item.
        where: what the images are, for people.
        on_test: True on the run's test split, False on synthetic defects.
        max_drop, max_class_drop: the budget (mean image and pixel AUROC; any class).
    """
    items: list
    fp32: list
    where: str
    on_test: bool
    max_drop: float = MAX_DROP
    max_class_drop: float = MAX_CLASS_DROP

    @cached_property
    def fp32_results(self) -> dict:
        """`results` of the fp32 outputs, computed once for the loop and the gate."""
        return self.results(self.fp32)

    def results(self, outputs: list) -> dict:
        """`mtad.metrics.Evaluator` results of per-item outputs, one per item."""
        from mtad.metrics import Evaluator
        from mtad.postprocess import resize_map

        ev = Evaluator()
        for (cls, label, _, mask), (maps, scores) in zip(self.items, outputs):
            if mask is not None:
                m = resize_map(np.asarray(maps, np.float32)[:, 0], mask.shape)
                ev.update([cls], [label], np.asarray(scores), mask[None], m)
            else:
                ev.update([cls], [label], np.asarray(scores))
        return ev.compute()

    def failures(self, fp32: dict, quant: dict) -> tuple[list[str], float]:
        """What misses the budget (one phrase each, with by how much) and the excess:
        the largest of the mean image and pixel AUROC drops and the largest class drop
        shifted by ``max_class_drop - max_drop``, so that the budget holds exactly when
        the excess is at most ``max_drop`` (the single figure NNCF's loop compares)."""
        out, excess = [], float("-inf")
        for k in ("image_auroc", "pixel_auroc"):
            f, q = fp32["mean"].get(k), quant["mean"].get(k)
            if f is None or q is None:
                continue
            d = f - q
            excess = max(excess, d)
            if d > self.max_drop:
                out.append(f"mean {_label(k)} drop {d:.4f} exceeds --max-drop {self.max_drop:g} "
                           f"by {d - self.max_drop:.4f}")
        for c, row in fp32["classes"].items():
            for k in ("image_auroc", "pixel_auroc"):
                f, q = row.get(k), quant["classes"].get(c, {}).get(k)
                if f is None or q is None:
                    continue
                d = f - q
                excess = max(excess, d - self.max_class_drop + self.max_drop)
                if d > self.max_class_drop:
                    out.append(f"class {c} {_label(k)} drop {d:.4f} exceeds "
                               f"{self.max_class_drop:g} by {d - self.max_class_drop:.4f}")
        return out, (0.0 if excess == float("-inf") else excess)


def _label(metric: str) -> str:
    return metric.replace("_", " ").replace("auroc", "AUROC")


def check_data(run, calibration: list, calib_info: dict, fp32_predict, max_drop: float = MAX_DROP,
               max_class_drop: float = MAX_CLASS_DROP, log=print) -> CheckData:
    """The check's images (`_check_data`) scored by ``fp32_predict`` (x -> (maps, scores)).

    On the run's test split (pixel metrics at ``eval.mask_size``, as `mtad test`), else on
    good calibration images plus synthetic defects, with a warning."""
    items, where, on_test = _check_data(run, calibration, calib_info, log)
    listed = list(items())
    return CheckData(listed, [fp32_predict(it[2]) for it in listed], where, on_test,
                     max_drop, max_class_drop)


def _check_data(run, calibration: list, calib_info: dict, log):
    """(items, where, on the test split): ``items()`` yields (class_name, label, image
    1 x 3 x S x S float32 in [0, 1], gt_mask M x M bool or None for a split without masks)."""
    from mtad.data.transforms import denormalise

    cfg = run.config
    try:
        from mtad.data.dataset import open_split

        if not cfg.data.root:
            raise FileNotFoundError("the run config names no data.root")
        ds = open_split(cfg.data, "test", mask_size=cfg.eval.mask_size)

        def items():
            for i in range(len(ds)):
                it = ds[i]
                x = denormalise(it["image"])
                mask = it["gt_mask"][0].numpy() > 0.5 if ds.has_masks else None
                yield it["class_name"], int(it["gt_label"]), _unit(x), mask

        return items, f"{len(ds)} test images of {ds.root}", True
    except Exception as exc:
        warnings.warn(f"accuracy check: the run's test split is not reachable "
                      f"({type(exc).__name__}: {exc}); checking on good quantization images and "
                      f"synthetic defects, and keeping the fp32 thresholds (not re-calibrated)",
                      stacklevel=3)
    from mtad.data.defects import add_defect

    rng = np.random.default_rng(0)
    n = min(len(calibration), SYNTHETIC_CHECK_IMAGES)
    picks = list(range(len(calibration)))[:n]
    kinds = ("cutpaste", "scratch", "stain")

    def items():
        for k, i in enumerate(picks):
            image, cls = calibration[i], calib_info["class_of"][i]
            if k % 2:
                other = calibration[picks[(k + 1) % n]].astype(np.float64) / 255.0
                image, mask = add_defect(image, kinds[k // 2 % 3], rng, lambda r: other)
                yield cls, 1, _unit(image), mask
            else:
                yield cls, 0, _unit(image), np.zeros(image.shape[:2], bool)

    return items, (f"{(n + 1) // 2} good quantization images and {n // 2} with synthetic "
                   f"defects (mtad.data.defects, seed 0)"), False


def _figures(results: dict) -> dict:
    return {c: {k: v.get(k) for k in CHECK_METRICS} for c, v in results["classes"].items()}


def check_accuracy(run, data: CheckData, quant_predict, precision: str, log=print) -> dict:
    """Score the quantized model on the check's images and compare it with fp32.

    Per class image AUROC, pixel AUROC and AUPRO of both, their drops (fp32 - quantized,
    positive = worse), the mean drops, the largest class drop, and the share of verdicts
    (pred_score >= the class's image threshold of the run) that flip. ``passed`` is
    False when the mean image or pixel AUROC drop exceeds ``data.max_drop`` or any
    class's image or pixel AUROC drops by more than ``data.max_class_drop`` (0.02);
    ``failures`` says by how much.

    ``thresholds``: F1-optimal thresholds of the quantized model on the test split,
    computed as training computes the run's (`mtad.metrics.Evaluator`), or None when
    the check ran on synthetic defects (then the run's are kept, not re-calibrated).
    """
    from mtad.postprocess import select_thresholds

    quant_out = [quant_predict(it[2]) for it in data.items]
    flips, counted = {}, {}
    for (cls, _, _, _), (_, f), (_, qs) in zip(data.items, data.fp32, quant_out):
        try:
            thr = select_thresholds(run.thresholds, cls if cls in (run.class_names or []) else None)
        except ValueError:   # no image threshold in the run: no verdicts to compare
            continue
        flips[cls] = flips.get(cls, 0) + int((float(f[0]) >= thr.image) != (float(qs[0]) >= thr.image))
        counted[cls] = counted.get(cls, 0) + 1
    res = {"fp32": data.fp32_results, precision: data.results(quant_out)}
    fp32, quant = _figures(res["fp32"]), _figures(res[precision])
    classes = {}
    for c in fp32:
        drops = {k: (None if fp32[c][k] is None or quant[c][k] is None
                     else fp32[c][k] - quant[c][k]) for k in CHECK_METRICS}
        classes[c] = {"fp32": fp32[c], precision: quant[c], "drop": drops,
                      "verdicts_flipped": flips.get(c), "images": counted.get(c)}
    mean = {k: {"fp32": res["fp32"]["mean"].get(k), precision: res[precision]["mean"].get(k)}
            for k in CHECK_METRICS}
    for k, v in mean.items():
        v["drop"] = None if v["fp32"] is None or v[precision] is None else v["fp32"] - v[precision]
    largest = max(((d, c, k) for c, row in classes.items() for k, d in row["drop"].items()
                   if d is not None and k != "pixel_aupro"), default=(None, None, None))
    failures, _ = data.failures(res["fp32"], res[precision])
    n_flip, n_all = sum(flips.values()), sum(counted.values())
    return {
        "on": data.where, "test_split": data.on_test, "precision": precision,
        "metrics": list(CHECK_METRICS), "classes": classes, "mean": mean,
        "largest_class_drop": ({"class": largest[1], "metric": largest[2], "drop": largest[0]}
                               if largest[1] is not None else None),
        "verdicts_flipped": n_flip if n_all else None,
        "verdicts_flipped_share": (n_flip / n_all) if n_all else None,
        "verdicts_at": "the run's thresholds (per class)" if n_all else "no image threshold",
        "max_drop": data.max_drop, "max_class_drop": data.max_class_drop,
        "passed": not failures, "failures": failures,
        "thresholds": res[precision]["thresholds"] if data.on_test else None,
    }


def accuracy_line(f: dict) -> str:
    """One line for people: mean figures, largest class drop, flipped verdicts, verdict."""
    m = f["mean"]
    p = f["precision"]

    def fmt(k):
        v = m[k]
        if v["drop"] is None:
            return f"{k} n/a"
        return f"{k} {v['fp32']:.4f} -> {v[p]:.4f} (drop {v['drop']:+.4f})"

    big = f["largest_class_drop"]
    flip = ("" if f["verdicts_flipped_share"] is None else
            f"; verdicts flipped {f['verdicts_flipped']} ({100 * f['verdicts_flipped_share']:.1f} %)")
    head = "accuracy check ok" if f["passed"] else "accuracy check FAILED"
    return (f"{head} ({p} vs fp32 on {f['on']}): {fmt('image_auroc')}, {fmt('pixel_auroc')}, "
            f"{fmt('pixel_aupro')}; largest class drop "
            + (f"{big['drop']:+.4f} ({big['class']} {big['metric']})" if big else "n/a") + flip
            + ("" if f["passed"] else "; " + "; ".join(f["failures"])))

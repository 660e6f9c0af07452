"""`mtad convert`: a run folder from a checkpoint that the authors' code trained.

The official MTAD code (github.com/Mazeqi/MTAD-KBS, a fork of ADer) saves the
model's state dict as ``net.pth`` / ``net_<epoch>.pth``, and ``ckpt.pth``, a dict
whose ``net`` entry is that state dict beside the optimizer and its metric records.
Its 797 tensors are placed onto mtad's names by the rule table RULES alone: a
tensor no rule places, a place that does not exist or has another shape, two
tensors for one place, or an mtad tensor left unfilled is an error naming it.

The run written holds the official recipe's config (configs/mtad_mvtec.yaml,
data root unset), the classes given, no epoch, no thresholds (the authors' code
keeps none; `mtad test --save-thresholds` calibrates them) and the source file's
SHA-256; `mtad test`, `predict`, `export` and `serve` open it through load_run.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from mtad.files import file_sha256, partial_dir
from mtad.runfile import CheckpointError, RunFile, read_torch_file, save_run

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "mtad_mvtec.yaml"
_BLOCK = r"net_s\.levels\.(\d+)\.blocks\.(\d+)\.mamba_att_blocks\.0\."
_MTREC = r"decoder.levels.\1.blocks.\2.block."

# (official name, as a full-match regex) -> mtad name; the first rule that matches applies.
RULES: tuple[tuple[str, str], ...] = (
    # encoder: the same timm ResNet34 (features_only keeps its module names)
    (r"net_t\.(.+)", r"encoder.net.\1"),
    # neck: official FPN -> mtad Neck (conv, BatchNorm pairs; bn_layer is the ResNet stage)
    (r"fpn\.conv1\.(.+)", r"neck.down1.0.\1"),
    (r"fpn\.bn1\.(.+)", r"neck.down1.1.\1"),
    (r"fpn\.conv21\.(.+)", r"neck.lateral2.0.\1"),
    (r"fpn\.bn21\.(.+)", r"neck.lateral2.1.\1"),
    (r"fpn\.conv2\.(.+)", r"neck.down2.0.\1"),
    (r"fpn\.bn2\.(.+)", r"neck.down2.1.\1"),
    (r"fpn\.conv31\.(.+)", r"neck.lateral3.0.\1"),
    (r"fpn\.bn31\.(.+)", r"neck.lateral3.1.\1"),
    (r"fpn\.convf\.(.+)", r"neck.fuse.0.\1"),
    (r"fpn\.bnf\.(.+)", r"neck.fuse.1.\1"),
    (r"fpn\.bn_layer\.(\d+)\.conv1\.(.+)", r"neck.stage.\1.body.0.\2"),
    (r"fpn\.bn_layer\.(\d+)\.bn1\.(.+)", r"neck.stage.\1.body.1.\2"),
    (r"fpn\.bn_layer\.(\d+)\.conv2\.(.+)", r"neck.stage.\1.body.3.\2"),
    (r"fpn\.bn_layer\.(\d+)\.bn2\.(.+)", r"neck.stage.\1.body.4.\2"),
    (r"fpn\.bn_layer\.(\d+)\.conv3\.(.+)", r"neck.stage.\1.body.6.\2"),
    (r"fpn\.bn_layer\.(\d+)\.bn3\.(.+)", r"neck.stage.\1.body.7.\2"),
    (r"fpn\.bn_layer\.(\d+)\.downsample\.([01])\.(.+)", r"neck.stage.\1.downsample.\2.\3"),
    # decoder: levels, their upsampling, MTRec blocks
    (r"net_s\.levels\.(\d+)\.upsample\.upsample\.([01])\.(.+)", r"decoder.levels.\1.upsample.\2.\3"),
    (r"net_s\.levels\.(\d+)\.blocks\.(\d+)\.pos_embed", r"decoder.levels.\1.blocks.\2.pos_embed"),
    (r"net_s\.levels\.(\d+)\.blocks\.(\d+)\.finalconv11\.(.+)", r"decoder.levels.\1.blocks.\2.fuse.\3"),
    # one Mamba-attention block: Mamba, its MLP, attention, its MLP, each after its LayerNorm
    (_BLOCK + r"norm_mixer_1\.(.+)", _MTREC + r"norm1.\3"),
    (_BLOCK + r"mixer\.(.+)", _MTREC + r"mamba.\3"),
    (_BLOCK + r"norm_mixer_2\.(.+)", _MTREC + r"norm2.\3"),
    (_BLOCK + r"mlp_mixer\.fc1\.(.+)", _MTREC + r"mlp1.0.\3"),
    (_BLOCK + r"mlp_mixer\.fc2\.(.+)", _MTREC + r"mlp1.2.\3"),
    (_BLOCK + r"norm_att_1\.(.+)", _MTREC + r"norm3.\3"),
    (_BLOCK + r"attn\.(.+)", _MTREC + r"attn.\3"),
    (_BLOCK + r"norm_att_2\.(.+)", _MTREC + r"norm4.\3"),
    (_BLOCK + r"mlp_att\.fc1\.(.+)", _MTREC + r"mlp2.0.\3"),
    (_BLOCK + r"mlp_att\.fc2\.(.+)", _MTREC + r"mlp2.2.\3"),
)
_COMPILED = tuple((re.compile(pattern), target) for pattern, target in RULES)

# What ckpt.pth holds besides tensors and plain values: numpy scalars in ADer's metric
# records. These rebuild a numpy scalar or dtype from its bytes and run no other code.
_NUMPY_SCALAR = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype")
_NUMPY_DTYPES = ("Float16DType", "Float32DType", "Float64DType", "BoolDType",
                 *(f"{u}Int{bits}DType" for u in ("", "U") for bits in (8, 16, 32, 64)))


def mtad_name(official: str) -> str | None:
    """The mtad state-dict name of an official one, by RULES; None when no rule matches."""
    for pattern, target in _COMPILED:
        if pattern.fullmatch(official):
            return pattern.sub(target, official)
    return None


def _numpy_scalar_globals() -> list:
    import numpy

    core = getattr(numpy, "_core", None) or numpy.core
    return [core.multiarray.scalar, numpy.dtype,
            *(getattr(numpy.dtypes, n) for n in _NUMPY_DTYPES if hasattr(numpy.dtypes, n))]


def _read_with_numpy_scalars(path: Path):
    """torch.load(weights_only=True) that also allows numpy scalars (ckpt.pth); any
    other Python object in the file is refused by name."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip (truncated, not torch's): read_torch_file says which
        needed = []
    others = [n for n in needed if n not in _NUMPY_SCALAR
              and not (n.startswith("numpy.dtypes.") and n[13:] in _NUMPY_DTYPES)]
    if others:
        raise CheckpointError(
            f"{path}: holds Python objects besides tensors ({', '.join(others[:3])}); mtad reads "
            "with weights_only=True and runs no code from a file: convert the net.pth that the "
            "authors' trainer writes beside ckpt.pth")
    with torch.serialization.safe_globals(_numpy_scalar_globals() if needed else []):
        return read_torch_file(path, "an official MTAD checkpoint", CheckpointError)


def read_official(path: str | Path) -> tuple[dict, str]:
    """(state dict, where in the file it was) of an official ``net.pth`` or ``ckpt.pth``.

    Read with ``weights_only=True``; for ckpt.pth, the numpy scalars of its metric
    records are allowed by name (the rest of the file must still be tensors and plain
    values) so that its ``net`` entry can be read.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a torch file, cut short, holding other Python objects, or
            holding no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (give the authors' net.pth or ckpt.pth)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        obj = _read_with_numpy_scalars(path)
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        raise CheckpointError(f"{path} is an mtad checkpoint already: name it (or its folder) "
                              "as a run; convert reads the authors' net.pth or ckpt.pth")
    where = "the file"
    if isinstance(obj, dict) and isinstance(obj.get("net"), dict):
        obj, where = obj["net"], "its 'net' entry"
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path}: holds no state dict of tensors (net.pth, or ckpt.pth "
                              "with a 'net' entry, as the authors' trainer writes them)")
    return obj, where


def convert_state_dict(official: dict, target: dict, source: str = "the checkpoint") -> dict:
    """Place every official tensor onto mtad's names; returns a state dict in `target`'s
    order (`target`: mtad's state dict, for names, shapes and dtypes).

    Raises:
        CheckpointError: naming the tensors that cannot be placed, the places that do
            not fit or are filled twice, and mtad's tensors left unfilled.
    """
    placed, problems = {}, []
    unplaced, wrong, twice = [], [], []
    for name, tensor in official.items():
        name = name[7:] if name.startswith("module.") else name  # saved from DDP
        ours = mtad_name(name)
        if ours is None or ours not in target:
            unplaced.append(name if ours is None else f"{name} (-> {ours})")
        elif tuple(tensor.shape) != tuple(target[ours].shape):
            wrong.append(f"{name} {tuple(tensor.shape)} (mtad {ours} {tuple(target[ours].shape)})")
        elif ours in placed:
            twice.append(ours)
        else:
            ref = target[ours]
            if tensor.dtype != ref.dtype and not (tensor.is_floating_point()
                                                  and ref.is_floating_point()):
                wrong.append(f"{name} {tensor.dtype} (mtad {ours} {ref.dtype})")
            else:
                placed[ours] = tensor.detach().to(ref.dtype).clone()
    unfilled = [k for k in target if k not in placed]

    def listing(what, names):
        return f"{len(names)} {what}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"

    for what, names in (("tensors no rule places", unplaced), ("that do not fit", wrong),
                        ("places filled twice", twice), ("mtad tensors left unfilled", unfilled)):
        if names:
            problems.append(listing(what, names))
    if problems:
        raise CheckpointError(f"{source} is not the official MTAD model mtad converts "
                              f"({len(official)} tensors; {'; '.join(problems)})")
    return {k: placed[k] for k in target}


def parse_classes(text: str | None) -> list[str]:
    """`a,b,c` -> ["a", "b", "c"]; None -> [].

    Raises:
        ValueError: an empty or repeated name.
    """
    if text is None:
        return []
    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names):
        raise ValueError(f"--classes: an empty class name in {text!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--classes: repeated class name(s) {', '.join(repeated)}")
    return names


def convert_checkpoint(checkpoint: str | Path, out: str | Path, classes: list[str] | None = None,
                       log=print) -> Path:
    """Write a run folder `out` from an official checkpoint; returns `out`.

    Everything is checked before anything is written; the folder appears whole
    (written beside it, then renamed).

    Raises:
        FileNotFoundError: no such checkpoint.
        FileExistsError: `out` exists and is not empty.
        CheckpointError: unreadable, or not the official model (names the tensors).
    """
    from mtad.config import load_config, save_config
    from mtad.models import create_model

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; --out must be a new or empty folder")
    official, where = read_official(checkpoint)
    cfg = load_config(RECIPE, [f"train.out_dir={out}"])
    cfg.data.root = None
    model = create_model("mtad", **dict(cfg.model.to_dict(), weights="none"))
    state = convert_state_dict(official, model.state_dict(), f"{checkpoint} ({where})")
    model.load_state_dict(state)  # strict: every name, once
    record = RunFile(  # no epoch, no thresholds, no training state: it cannot be resumed
        model=state, config=cfg.to_dict(), class_names=list(classes or []),
        source={"converted_from": str(checkpoint), "sha256": file_sha256(checkpoint),
                "entry": where, "code": "official MTAD (github.com/Mazeqi/MTAD-KBS)"})
    tmp = partial_dir(out)
    try:
        save_run(record, tmp / "last.pt")
        save_config(cfg, tmp / "config.yaml")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"converted {len(state)} tensors of {checkpoint} (sha256 {record.source['sha256']}) "
        f"into {out / 'last.pt'}")
    log(f"classes: {', '.join(classes) if classes else 'none given (--classes a,b,c)'}; "
        "no epoch; no thresholds (the authors' code keeps none): calibrate them with "
        f"`mtad test --checkpoint {out} --save-thresholds data.root=DATASET`")
    return out

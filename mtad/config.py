"""The run config: YAML in, dotted command-line overrides, validated dataclasses out.

A config is data: YAML is parsed with `yaml.safe_load`, never executed. An
unknown key or a value of the wrong type is a ConfigError that names the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mtad.models.mtad import MTADConfig


class ConfigError(ValueError):
    """A config problem; the message names the offending key."""


def choices(*allowed: str, default=None, none: bool = False):
    """A config field with a closed set of values: checked (case-insensitively, stored
    in the spelling given here) when a config is built; `none` also admits null."""
    return field(default=default, metadata={"choices": allowed, "none": none})


def positive(default, *, zero: bool = False, least: float | None = None):
    """A config field that must be > 0 (or >= 0 with `zero`, or >= `least`)."""
    if least is not None or zero:
        return field(default=default, metadata={"min": least if least is not None else 0})
    return field(default=default, metadata={"above": 0})


@dataclass
class DataConfig:
    root: str | None = None        # dataset root (the user's to set)
    layout: str | None = None      # None: detected from the files; else a name of mtad.data.LAYOUTS
    classes: list | None = None    # None: every class found
    # the model's input side, px; the neck works at 1/32 of it, so at least 32
    image_size: int = positive(256, least=32)
    batch_size: int = positive(8)          # training images per step
    test_batch_size: int = positive(8)     # images per evaluation step
    num_workers: int = positive(2, zero=True)  # data-loading processes; 0: the main one
    mask_threshold: float = 0.5    # a resized ground-truth mask is a defect above it
    on_error: str = choices("raise", "skip", default="raise")  # skip: bad files warned, counted, left out
    exif_orientation: bool = True  # apply EXIF orientation on read (as viewers and annotation tools)
    options: dict = field(default_factory=dict)  # layout-specific, e.g. {views: [C1]}
    # more folders whose train split (any layout, detected) joins the training images:
    # `mtad finetune --add-good`, e.g. the confirmed good parts of `mtad review export`
    extra_train: list = field(default_factory=list)

    def __post_init__(self):
        from mtad.data import DataError, check_data_options, normalise_layout

        try:
            self.layout = normalise_layout(self.layout, key="data.layout")
            self.options = check_data_options(self.layout, self.options, key="data.options")
        except DataError as exc:
            raise ConfigError(str(exc)) from None


@dataclass
class OptimConfig:
    lr: float = positive(5e-4)     # AdamW's learning rate
    weight_decay: float = positive(0.01, zero=True)  # what the official run applies (its 1e-4 is never passed)
    betas: tuple = (0.9, 0.999)    # AdamW's betas
    grad_clip: float = positive(5.0, zero=True)      # 0: no clipping
    decay_at: float = positive(0.8, zero=True)       # fraction of all iterations after which lr *= decay_factor
    decay_factor: float = positive(0.1, zero=True)  # see decay_at


@dataclass
class TrainConfig:
    epochs: int = positive(500)    # passes over the training images
    seed: int = 42                 # of every random choice (data order, augmentation, weights)
    amp: str = choices("none", "bf16", "fp16", default="none")  # mixed-precision training
    eval_every: int = positive(50, zero=True)  # epochs; 0: only the last epoch is evaluated
    out_dir: str = "runs/mtad"     # the run folder (new or empty; --resume continues one)
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    deterministic: bool = False    # deterministic algorithms only (slower; errors where none exists)
    # a run folder or checkpoint whose model weights start this new run (`mtad finetune`);
    # optimizer, schedule and epochs start anew. Ignored on --resume (the run's own weights)
    init_from: str | None = None

    def __post_init__(self):
        device = str(self.device).lower()
        head, _, index = device.partition(":")
        if head not in ("auto", "cpu", "cuda") or (index and (head != "cuda" or not index.isdigit())):
            raise ConfigError(f"train.device: unknown device {self.device!r}; "
                              f"allowed: auto, cpu, cuda, cuda:N")
        self.device = device


@dataclass
class EvalConfig:
    streaming: bool = False        # histogram-binned, bounded memory, approximate
    bins: int = positive(4096)     # histogram bins of the streaming mode
    report_images: int = positive(8, zero=True)  # test images shown in the report page
    size: int = positive(256)      # side (px) at which pixel metrics are computed: the
                                   # published protocol's 256, whatever the model's input size


@dataclass
class RunConfig:
    model: MTADConfig = field(default_factory=MTADConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return _to_plain(self)


def _to_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


def _convert(value, hint, key: str):
    """Check (and gently coerce: int -> float, list -> tuple) a value against a type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(hint, value, key + ".")
    expected = origin or hint
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str) and _looks_numeric(value):
        return float(value)  # YAML 1.1 reads '1e-3' as a string
    if expected in (tuple, list) and isinstance(value, (list, tuple)):
        return expected(value)
    if expected is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if expected is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if expected is typing.Any or isinstance(value, expected):
        return value
    raise ConfigError(f"{key}: expected {getattr(expected, '__name__', expected)}, "
                      f"got {type(value).__name__} {value!r}")


class ConfigNote(UserWarning):
    """A key of an older config that is read and ignored (see RETIRED)."""

    label = "note"      # mtad's CLI prints it as "note: ..." (mtad.cli._format_warning)


RETIRED = {
    "model.scan_backend": "the selective-scan backend is a run-time choice, never stored in a "
                          "run: the saved value is ignored; choose it with MTAD_SCAN_BACKEND or "
                          "--scan-backend (train, test, predict, export, serve)",
}
"""Keys older configs and runs carry that are read and ignored: a non-null value gives a
`ConfigNote` saying so (a null one, which every run before issue 18 holds, is dropped quietly)."""


def _drop_retired(values: dict, prefix: str) -> dict:
    import warnings

    kept = {}
    for key, value in values.items():
        if prefix + key in RETIRED:
            if value is not None:
                warnings.warn(f"{prefix}{key}={value}: {RETIRED[prefix + key]}", ConfigNote,
                              stacklevel=2)
        else:
            kept[key] = value
    return kept


def _build(cls, values: dict, prefix: str = ""):
    values = _drop_retired(values, prefix)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; "
                          f"known keys{' of ' + prefix[:-1] if prefix else ''}: {', '.join(names)}")
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in values.items()}
    for f in dataclasses.fields(cls):
        if f.name in kwargs:
            kwargs[f.name] = _check_declared(kwargs[f.name], f.metadata, prefix + f.name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith(prefix) and prefix else
                          f"{prefix[:-1] or 'config'}: {text}") from exc


def _check_declared(value, meta, key: str):
    """Apply a field's declared constraints (see `choices`, `positive`)."""
    if "choices" in meta:
        if value is None and meta["none"]:
            return None
        allowed = meta["choices"]
        match = [a for a in allowed if isinstance(value, str) and a.lower() == value.lower()]
        if not match:
            raise ConfigError(f"{key}: unknown value {value!r}; allowed: {', '.join(allowed)}")
        return match[0]
    if "min" in meta and value is not None and not value >= meta["min"]:
        raise ConfigError(f"{key}: must be {meta['min']:g} or more, got {value!r}")
    if "above" in meta and value is not None and not value > meta["above"]:
        raise ConfigError(f"{key}: must be greater than {meta['above']:g}, got {value!r}")
    return value


def parse_override(text: str) -> tuple[list[str], object]:
    """'optim.lr=1e-3' -> (['optim', 'lr'], 0.001); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config (or start from the defaults) and apply overrides."""
    data = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    data = apply_overrides(data, list(overrides))
    try:
        return _build(RunConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{exc}" + (f" (config {path})" if path is not None else "")) from exc


def config_from_dict(data: dict) -> RunConfig:
    return _build(RunConfig, data)


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def config_keys() -> list[tuple[str, str, str, str]]:
    """(key, default, allowed, what) of every config key, from the declarations above
    (and `MTADConfig`'s): ``allowed`` from a field's `choices` / `positive` metadata,
    else its type; ``what`` is the comment on the field's line. The README's table is
    this (`python -m mtad.config` prints it; a test keeps the two equal)."""
    import inspect
    import re

    rows = []
    for section in dataclasses.fields(RunConfig):
        cls = section.default_factory
        hints = typing.get_type_hints(cls)
        comments = _field_comments(inspect.getsource(cls))
        defaults = cls() if section.name != "model" else MTADConfig.__new__(MTADConfig)
        for f in dataclasses.fields(cls):
            value = (getattr(defaults, f.name) if section.name != "model" else
                     f.default if f.default is not dataclasses.MISSING else f.default_factory())
            meta = f.metadata
            if "choices" in meta:
                allowed = " \\| ".join(meta["choices"]) + (" \\| null" if meta["none"] else "")
            elif "min" in meta:
                allowed = f">= {meta['min']:g}"
            elif "above" in meta:
                allowed = f"> {meta['above']:g}"
            else:
                allowed = re.sub(r"\btyping\.|<class '(\w+)'>", r"\1", str(hints[f.name]))
                allowed = re.sub(r"\bNone(Type)?\b", "null", allowed).replace("|", "\\|")
            shown = yaml.safe_dump(_to_plain(value), default_flow_style=True).strip()
            shown = shown.removesuffix("...").strip()
            rows.append((f"{section.name}.{f.name}", shown, allowed,
                         comments.get(f.name, "").replace("|", "\\|")))
    return rows


def _field_comments(source: str) -> dict[str, str]:
    """A dataclass's field -> its comment: the one on its line (continued on comment-only
    lines below it), else the comment-only lines just above it."""
    import re

    found, above, last, indent = {}, [], None, 0
    for line in source.splitlines():
        text = line.strip()
        field_line = re.match(r"(\w+):[^#]*?(?:#\s*(.*))?$", text)
        if text.startswith("#"):
            if last is not None and len(line) - len(line.lstrip()) > indent:   # continued
                found[last] += " " + text.lstrip("# ")
            else:
                above.append(text.lstrip("# "))
        elif field_line and not text.startswith(("def ", "class ", "@")):
            name, comment = field_line.groups()
            found[name] = comment or " ".join(above)
            above, last, indent = [], name if comment else None, len(line) - len(line.lstrip())
        else:
            above, last = [], None
    return {k: v.strip() for k, v in found.items()}


def config_table() -> str:
    """`config_keys` as a Markdown table."""
    lines = ["| key | default | allowed | what |", "|---|---|---|---|"]
    lines += [f"| `{k}` | `{d}` | {a} | {w} |" for k, d, a, w in config_keys()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_table())

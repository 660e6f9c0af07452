"""`mtad calibrate`: thresholds from good parts at a target false-reject rate.

Scores good images with the model (a run through torch, an export folder
without it), calibrates per class and pooled (`mtad.calibration.calibrate_good`)
and appends a version to the model's calibration.json. Imports no torch itself.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from mtad.calibration import (CalibrationError, CalibrationStore, Thresholds, calibrate_good,
                              images_needed)
from mtad.data.errors import DataError
from mtad.files import file_sha256
from mtad.data.imageio import IMAGE_EXTENSIONS
from mtad.data.transforms import model_input


def model_store(model) -> CalibrationStore:
    """The calibration.json of a model from `mtad.deploy.open_model` (its run folder or
    export folder), bound to its checkpoint's SHA-256."""
    if getattr(model, "run", None) is not None:            # a run (TorchModel)
        return CalibrationStore(model.run.run_dir, model.checkpoint_sha256)
    sha = model.checkpoint_sha256
    if not sha:
        raise CalibrationError(f"{model.path}: metadata.json records no checkpoint SHA-256 "
                               "(source.sha256); re-export the run")
    return CalibrationStore(model.path, sha)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def collect_good(dirs: list[str | Path], class_name: str | None, known: list[str]
                 ) -> tuple[dict, str, dict]:
    """{class: [good image files]}, a phrase for the provenance, and {class:
    [defective image files]} (from dataset roots, whose test split has labels).

    Each DIR is, in this order: all of it for ``class_name`` when given; a dataset
    root in a supported layout (its test split's good images); or a folder of
    class folders (``DIR/<class>/...``, searched recursively).

    Raises:
        CalibrationError: a DIR that does not exist, a class folder the model does
            not know, or a class with no image.
    """
    from mtad.data.errors import Problems
    from mtad.data.layouts import detect_layout, list_records

    found: dict[str, list[Path]] = {}
    defects: dict[str, list[Path]] = {}
    how = []
    for raw in dirs:
        d = Path(raw)
        if not d.is_dir():
            raise CalibrationError(f"--good {d}: no such folder")
        if class_name is not None:
            found.setdefault(class_name, []).extend(_images(d))
            how.append(f"{d} (all as {class_name})")
            continue
        try:
            layout = detect_layout(d)
        except DataError:
            layout = None
        if layout is not None and layout != "folder":
            records = list_records(d, layout, "test", None, Problems("skip"))
            for r in records:
                (found if r.label == 0 else defects).setdefault(r.class_name, []).append(
                    Path(r.image_path))
            how.append(f"{d} ({layout} test split, good images)")
            continue
        subs = sorted(p for p in d.iterdir() if p.is_dir())
        if not subs:
            raise CalibrationError(f"--good {d}: no class folders in it (DIR/<class>/...); "
                                   "name the class with --class NAME")
        for sub in subs:
            found.setdefault(sub.name, []).extend(_images(sub))
        how.append(f"{d} (class folders)")
    for name, files in found.items():
        if known and name not in known:
            raise CalibrationError(f"class {name!r} (from --good) is not a class of the model; "
                                   f"known classes: {', '.join(known)}")
        if not files:
            raise CalibrationError(f"no good images found for class {name!r}")
    if not found:
        raise CalibrationError("no good images found in " + ", ".join(map(str, dirs)))
    return ({k: sorted(set(v)) for k, v in found.items()}, "; ".join(how),
            {k: sorted(set(v)) for k, v in defects.items() if k in found})


def training_digests(config: dict | None) -> tuple[set[str] | None, str]:
    """Content hashes of the run's training images, when its data root is reachable
    (None otherwise), and a sentence saying which."""
    from mtad.data.errors import Problems
    from mtad.data.layouts import list_records

    data = (config or {}).get("data") or {}
    root = data.get("root")
    if not root or not os.path.isdir(root):
        return None, (f"the training images are unknown here (data root {root!r} not found): "
                      "the good images were not checked against them")
    try:
        records = list_records(root, data.get("layout"), "train", data.get("classes"),
                               Problems("skip"), **(data.get("options") or {}))
    except DataError as exc:
        return None, f"the training listing could not be read ({exc}): images not checked"
    return {file_sha256(Path(r.image_path)) for r in records}, \
        f"checked against the {len(records)} training images of {root} (content SHA-256)"


def score_images(model, files: list[Path], batch_size: int = 8) -> np.ndarray:
    """pred_score of each file (float64), read and resized as training reads them.

    Raises:
        DataError: a file that does not decode (the message names it).
    """
    scores = []
    for start in range(0, len(files), batch_size):
        part = files[start:start + batch_size]
        x = np.stack([model_input(f, model.image_size) for f in part])
        scores.append(np.asarray(model.predict(x)[1], np.float64))
    return np.concatenate(scores) if scores else np.zeros(0)


def calibrate(model, good: list[str | Path], class_name: str | None = None,
              false_reject: float = 0.01, confidence: float = 0.95,
              ng_false_reject: float | None = None, log=print) -> Thresholds:
    """Calibrate ``model`` (from `mtad.deploy.open_model`) on good images and store the
    result as the active version of its calibration.json; returns it.

    Raises:
        CalibrationError: bad rates, classes or folders, training images among the
            good ones, or an unreadable calibration.json (which is left as it was).
        DataError: an image that does not decode.
    """
    from mtad.calibration import _check_rate

    _check_rate("--false-reject", false_reject)
    _check_rate("--confidence", confidence)
    if ng_false_reject is not None:
        _check_rate("--ng-false-reject", ng_false_reject)
    known = list(model.class_names)
    if class_name is not None and known and class_name not in known:
        raise CalibrationError(f"--class {class_name!r} is not a class of the model; known "
                               f"classes: {', '.join(known)}")
    store = model_store(model)
    store.read()                                  # a damaged file stops us before any work
    files, how, defects = collect_good(good, class_name, known)
    trained, said = training_digests((model.info or {}).get("config"))
    if trained is not None:
        for name, paths in files.items():
            seen = [p for p in paths if file_sha256(p) in trained]
            if seen:
                raise CalibrationError(
                    f"{len(seen)} of the {len(paths)} good images of class {name!r} are training "
                    f"images of the model (e.g. {seen[0]}): their scores are lower than new "
                    "parts', so the threshold would be too low; use images it has not seen")
    log(f"good images: {', '.join(f'{n} {len(p)}' for n, p in files.items())}; {said}")
    scores = {name: score_images(model, paths) for name, paths in files.items()}
    previous = Thresholds.coerce(model.thresholds)
    made = calibrate_good(scores, false_reject, confidence, ng_false_reject, source=how,
                          checkpoint_sha256=store.sha, previous=previous, known_classes=known or None)
    made = store.add(replace(made, request={
        "good": [str(Path(d).resolve()) for d in good], "class_name": class_name,
        "false_reject": false_reject, "confidence": confidence,
        "ng_false_reject": ng_false_reject}))
    for name in [*scores, None]:
        levels = made.classes[name] if name else made.pooled
        p = levels.provenance
        label = name or "pooled"
        line = (f"{label}: {p['n_images']} images, REVIEW above {levels.image:.6g} "
                f"(false-reject <= {p['achieved_false_reject']:.3g} at {p['confidence']:.3g} confidence)")
        if levels.ng is not None:
            line += (f", NG above {levels.ng:.6g} (<= {p['ng_achieved_false_reject']:.3g})")
        log(line)
        if p["achieved_false_reject"] > false_reject * (1 + 1e-12):
            log(f"  {label}: {p['n_images']} images guarantee at best {p['achieved_false_reject']:.3g}; "
                f"the target {false_reject:g} at {p['confidence']:g} needs "
                f"{images_needed(false_reject, p['confidence'])}")
        if ng_false_reject is not None and p["ng_achieved_false_reject"] > ng_false_reject * (1 + 1e-12):
            log(f"  {label}: NG target {ng_false_reject:g} needs "
                f"{images_needed(ng_false_reject, p['ng_confidence'])} images; "
                f"{p['n_images']} guarantee {p['ng_achieved_false_reject']:.3g}")
    from mtad.postprocess import select_thresholds, verdict_of

    for name, paths in defects.items():      # labelled defects: how many would pass as OK
        choice = select_thresholds(made, name)
        verdicts = [verdict_of(s, choice) for s in score_images(model, paths)]
        line = (f"{name}: defective test images passed as OK: "
                f"{sum(v == 'OK' for v in verdicts)}/{len(verdicts)} at the REVIEW level")
        if choice.ng is not None:
            line += f", {sum(v != 'NG' for v in verdicts)}/{len(verdicts)} not NG at the NG level"
        log(line)
    kept = [n for n in made.classes if n not in scores]
    if kept:
        log(f"kept the previous thresholds of {', '.join(kept)}")
    if ng_false_reject is not None:
        log(f"each level at confidence {1 - (1 - confidence) / 2:g}, so both hold together at "
            f"{confidence:g}")
    log(f"calibration v{made.version} written to {store.path} (active)")
    return made

"""The run's plots, drawn with matplotlib (Agg, no display): the training loss per
step, the test metrics at each evaluation against epoch and wall-clock time, and
per class the image scores of normal and defective test images with the
calibrated thresholds marked."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CURVES = (("image_auroc", "I-AUROC"), ("pixel_auroc", "P-AUROC"), ("pixel_aupro", "AUPRO"),
          ("pixel_ap", "P-AP"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(train_loss: list, path: Path) -> Path | None:
    """Training loss per step ([step, loss] pairs), with a running mean; None without data."""
    if not train_loss:
        return None
    plt = _pyplot()
    steps, losses = np.asarray(train_loss, dtype=np.float64).T
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    ax.plot(steps, losses, color="#9db4d6", linewidth=0.8, label="per step")
    window = max(1, len(losses) // 50)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="#1f4e9c", linewidth=1.6,
                label=f"running mean ({window} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_metrics(history: list[dict], path: Path) -> Path | None:
    """Mean test metrics at each evaluation, against epoch and against training
    time (minutes, when recorded); None without evaluations."""
    if not history:
        return None
    plt = _pyplot()
    timed = all("elapsed" in h for h in history)
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(9 if timed else 5, 3.2), dpi=100,
                             squeeze=False)
    xs = [("epoch", [h["epoch"] for h in history])]
    if timed:
        xs.append(("training time (min)", [h["elapsed"] / 60 for h in history]))
    for ax, (label, x) in zip(axes[0], xs):
        for key, name in CURVES:
            y = [h["mean"].get(key) for h in history]
            if any(v is not None for v in y):
                ax.plot(x, [np.nan if v is None else 100 * v for v in y], marker="o",
                        markersize=3, label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("mean over classes (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_score_histograms(image_scores: dict, thresholds: dict | None, path: Path) -> Path | None:
    """Per class: histograms of pred_score for normal vs defective test images, the
    class's calibrated image threshold (solid) and the pooled one (dashed)."""
    if not image_scores:
        return None
    plt = _pyplot()
    names = sorted(image_scores)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), dpi=100, squeeze=False)
    thresholds = thresholds or {}
    for ax, name in zip(axes.flat, names):
        normal = np.asarray(image_scores[name]["normal"], dtype=np.float64)
        defective = np.asarray(image_scores[name]["defective"], dtype=np.float64)
        both = np.concatenate([normal, defective])
        bins = np.linspace(both.min(), both.max(), 21) if both.size and np.ptp(both) > 0 else 10
        ax.hist(normal, bins=bins, alpha=0.6, color="#2a9d8f", label=f"normal ({normal.size})")
        ax.hist(defective, bins=bins, alpha=0.6, color="#e76f51",
                label=f"defective ({defective.size})")
        own = (thresholds.get("classes") or {}).get(name, {}).get("image")
        if own is not None:
            ax.axvline(own, color="black", linewidth=1.2, label="class threshold")
        if thresholds.get("image") is not None:
            ax.axvline(thresholds["image"], color="black", linestyle="--", linewidth=1,
                       label="pooled threshold")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("pred_score", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

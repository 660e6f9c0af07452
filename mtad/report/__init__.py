"""Reports out: results files (results.py), heat-map overlays (overlay.py) and the
run's report page (page.py). Names are imported on first use: overlays need only
numpy and PIL, so an exported model's inferencer can draw them without torch."""
import importlib

_API = {
    "colorize": "overlay",
    "heatmap_scale": "overlay",
    "overlay": "overlay",
    "draw_overlay": "overlay",
    "defect_outline": "overlay",
    "ramp_lut": "overlay",
    "save_png": "overlay",
    "best_epoch": "results",
    "write_results": "results",
    "write_report_page": "page",
    "write_report": "page",
}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Reports out: results files (results.py), heat-map overlays (drawing.py) and the
run's report page (page.py). Names are imported on first use: overlays need only
numpy and PIL, so an exported model's inferencer can draw them without torch."""
from mtad._lazy import lazy_namespace

_API = {
    "colorize": "drawing",
    "heatmap_scale": "drawing",
    "overlay": "drawing",
    "save_png": "drawing",
    "draw_overlay": "drawing",
    "defect_outline": "drawing",
    "ramp_lut": "drawing",
    "best_epoch": "results",
    "write_results": "results",
    "write_report_page": "page",
    "write_report": "page",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy_namespace(__name__, _API)

"""Reports out: results files (results.py), heat-map overlays (overlay.py) and the
run's report page (page.py). Overlays need only numpy and PIL, so an exported
model's inferencer can draw them without torch; results and page are imported on
first use."""
import importlib

# Imported now, not on first use: the submodule `overlay` and its function `overlay`
# share a name, and whichever import ran last would win (a lazily imported
# submodule rebinds the package attribute to the module). numpy + PIL only.
from mtad.report.overlay import (colorize, defect_outline, draw_overlay, heatmap_scale,
                                 overlay, ramp_lut, save_png)

_EAGER = ["colorize", "defect_outline", "draw_overlay", "heatmap_scale", "overlay", "ramp_lut",
          "save_png"]
_API = {
    "best_epoch": "results",
    "write_results": "results",
    "write_report_page": "page",
    "write_report": "page",
}

__all__ = sorted([*_EAGER, *_API])


def __getattr__(name):
    if name in _API:
        value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

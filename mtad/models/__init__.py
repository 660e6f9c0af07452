"""Models: MTAD and its parts. ``MTAD(config)`` builds one from a `MTADConfig`
(defined with the other config sections in `mtad.config`, re-exported here)."""
from mtad.config import MTADConfig
from mtad.models.mtad import MTAD, Prediction, parameter_table

__all__ = ["MTAD", "MTADConfig", "Prediction", "parameter_table"]

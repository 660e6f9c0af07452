"""Models: MTAD and its parts. A model name maps to a constructor in MODELS."""
from mtad.models.mtad import MODELS, MTAD, MTADConfig, Prediction, create_model, parameter_table

__all__ = ["MODELS", "MTAD", "MTADConfig", "Prediction", "create_model", "parameter_table"]

"""Inference: sliding-window or whole-volume prediction with a model folder."""

from delineo.inference.predictor import Predictor, keep_largest_components, predict_probabilities

__all__ = ["Predictor", "keep_largest_components", "predict_probabilities"]

"""One training loop for 2D/3D and plain/noisy-label training; losses; sample weighting."""

from delineo.training.config import TrainConfig
from delineo.training.losses import SegmentationLoss
from delineo.training.loop import train
from delineo.training.weighting import SampleWeighting, UniformWeighting, build_weighting, register_weighting

__all__ = ["SampleWeighting", "SegmentationLoss", "TrainConfig", "UniformWeighting", "build_weighting", "register_weighting", "train"]

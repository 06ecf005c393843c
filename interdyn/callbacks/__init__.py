"""Lightning callbacks (logging, evaluation) built on the module's public methods."""

from interdyn.callbacks.counterfactual import CounterfactualEvaluation
from interdyn.callbacks.evaluation import VideoEvaluation
from interdyn.callbacks.force_propagation import ForcePropagation
from interdyn.callbacks.mask_noise import MaskNoiseSweep
from interdyn.callbacks.prediction_writer import VideoPredictionWriter
from interdyn.callbacks.video_logger import SampleVideoLogger

__all__ = [
    "CounterfactualEvaluation",
    "ForcePropagation",
    "MaskNoiseSweep",
    "SampleVideoLogger",
    "VideoEvaluation",
    "VideoPredictionWriter",
]

"""Lightning callbacks (logging, evaluation) built on the module's public methods."""

from interdyn.callbacks.evaluation import VideoEvaluation
from interdyn.callbacks.experiments import CounterfactualEvaluation, ForcePropagation, MaskNoiseSweep
from interdyn.callbacks.video_logger import SampleVideoLogger

__all__ = [
    "CounterfactualEvaluation",
    "ForcePropagation",
    "MaskNoiseSweep",
    "SampleVideoLogger",
    "VideoEvaluation",
]

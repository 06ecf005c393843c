"""Lightning callbacks (logging, evaluation) built on the module's public methods."""

from interdyn.callbacks.evaluation import VideoEvaluation
from interdyn.callbacks.video_logger import SampleVideoLogger

__all__ = ["SampleVideoLogger", "VideoEvaluation"]

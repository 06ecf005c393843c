"""interdyn: training, evaluation and inference for InterDyn (a ControlNet branch on Stable Video Diffusion)."""

__version__ = "0.1.0"

"""Pure PyTorch / diffusers models of InterDyn (no Lightning, no data code)."""

from interdyn.models.controlnet import ControlNetSDVModel, ControlNetSDVOutput
from interdyn.models.pipeline import InterDynPipeline, InterDynPipelineOutput
from interdyn.models.released import fold_released_residuals, load_controlnet, released_multiplicities
from interdyn.models.svd import SVDComponents, build_svd, get_svd, load_svd, save_svd
from interdyn.models.unet import UNetSpatioTemporalControlModel

__all__ = [
    "ControlNetSDVModel",
    "ControlNetSDVOutput",
    "InterDynPipeline",
    "InterDynPipelineOutput",
    "SVDComponents",
    "UNetSpatioTemporalControlModel",
    "build_svd",
    "fold_released_residuals",
    "get_svd",
    "load_controlnet",
    "load_svd",
    "released_multiplicities",
    "save_svd",
]

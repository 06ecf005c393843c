"""InterDyn on Wan2.2 TI2V-5B: the frozen parts, the control branch, TI2V conditioning and sampling
(pure PyTorch / diffusers, no Lightning)."""

from interdyn.models.wan.components import (
    TINY_WAN_ARCHITECTURE,
    WAN22_TI2V_ARCHITECTURE,
    WanComponents,
    build_wan,
    get_wan,
    load_wan,
    save_wan,
)
from interdyn.models.wan.controlnet import (
    WanControlConditioningEncoder,
    WanControlNetModel,
    WanControlNetOutput,
    check_clip_frames,
    select_layers,
)
from interdyn.models.wan.pipeline import InterDynWanPipeline, WanPipelineOutput
from interdyn.models.wan.prompt import load_prompt_embeds, save_prompt_embeds, zero_prompt_embeds
from interdyn.models.wan.transformer import WanTokens, WanTransformer3DControlModel

__all__ = [
    "TINY_WAN_ARCHITECTURE",
    "WAN22_TI2V_ARCHITECTURE",
    "InterDynWanPipeline",
    "WanComponents",
    "WanControlConditioningEncoder",
    "WanControlNetModel",
    "WanControlNetOutput",
    "WanPipelineOutput",
    "WanTokens",
    "WanTransformer3DControlModel",
    "build_wan",
    "check_clip_frames",
    "get_wan",
    "load_prompt_embeds",
    "load_wan",
    "save_prompt_embeds",
    "save_wan",
    "select_layers",
    "zero_prompt_embeds",
]

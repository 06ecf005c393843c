"""The inputs of ``interdyn generate``: an image (or a clip folder) and driver masks from user files,
brought to the model's clip (:mod:`interdyn.inputs.files` reads the files, :mod:`interdyn.inputs.clips`
resamples, resizes and crops them)."""

from interdyn.data.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, binarize, mask_values
from interdyn.inputs.clips import (
    DEMO_CLIP,
    GenerationInputs,
    ReadOptions,
    control_tensor,
    fit_masks,
    frame_indices,
    load_clip_inputs,
    load_image_inputs,
)
from interdyn.inputs.files import (
    FOLDER_FPS,
    MaskSource,
    find_clip_parts,
    masks_npz_bytes,
    read_frames,
    read_image,
    read_masks,
)

__all__ = [
    "DEMO_CLIP",
    "FOLDER_FPS",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "GenerationInputs",
    "MaskSource",
    "ReadOptions",
    "binarize",
    "mask_values",
    "find_clip_parts",
    "frame_indices",
    "load_clip_inputs",
    "load_image_inputs",
    "control_tensor",
    "fit_masks",
    "masks_npz_bytes",
    "read_frames",
    "read_image",
    "read_masks",
]

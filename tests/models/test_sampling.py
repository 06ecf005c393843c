"""The sampling settings have one definition: the pipeline's and the module's defaults are its fields."""

from __future__ import annotations

import inspect

import pytest

from interdyn.models.pipeline import InterDynPipeline
from interdyn.models.sampling import DEFAULT_SAMPLING, SamplingSettings
from interdyn.training.module import InterDynModule


def test_defaults_are_the_settings():
    parameters = inspect.signature(InterDynPipeline.__call__).parameters
    assert {
        name: parameters[name].default for name in SamplingSettings.names()
    } == DEFAULT_SAMPLING.as_kwargs()
    # the module takes the settings whole, with these defaults
    assert inspect.signature(InterDynModule.__init__).parameters["sampling"].default is DEFAULT_SAMPLING


def test_the_papers_settings_and_their_sources():
    assert DEFAULT_SAMPLING.as_kwargs() == {
        "num_inference_steps": 50,
        "min_guidance_scale": 1.0,
        "max_guidance_scale": 3.0,
        "fps_id": 6,
        "motion_bucket_id": 40,
        "noise_aug_strength": 0.02,
        "conditioning_scale": 1.0,
        "scheduler": "euler",
        "window_overlap": 4,  # long videos only (docs/long.md)
        "continuation": "hold",
    }
    recorded = SamplingSettings.from_mapping({"num_inference_steps": 2, "learning_rate": 1e-5})
    assert (
        recorded.num_inference_steps == 2 and recorded.fps_id == 6
    )  # other keys ignored, missing ones default
    assert recorded.with_overrides(fps_id=None, scheduler="dpmpp_2m").as_kwargs() == {
        **recorded.as_kwargs(),
        "scheduler": "dpmpp_2m",
    }
    with pytest.raises(ValueError, match="scheduler must be one of"):
        SamplingSettings(scheduler="ddim")

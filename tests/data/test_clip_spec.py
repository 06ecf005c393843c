"""One clip contract: the paper's clip, passed whole to every place that cuts clips, by default."""

from __future__ import annotations

import inspect
from dataclasses import FrozenInstanceError, replace

import pytest

from interdyn.commands.evaluate import evaluate
from interdyn.commands.generate import build_parser, clip_spec
from interdyn.data.clip_spec import PAPER_CLIP, ClipSpec
from interdyn.data.datamodule import ShardDataModule
from interdyn.data.shards import ClipDecoder
from interdyn.errors import ConfigError
from interdyn.inputs import DEMO_CLIP


def test_the_paper_clip_is_14_frames_at_7_fps_of_256x384():
    assert (PAPER_CLIP.num_frames, PAPER_CLIP.fps, PAPER_CLIP.height, PAPER_CLIP.width) == (14, 7.0, 256, 384)
    assert (PAPER_CLIP.crop, PAPER_CLIP.window, PAPER_CLIP.frame_stride) == ("mask_aware", "center", None)
    with pytest.raises(FrozenInstanceError):
        PAPER_CLIP.num_frames = 3  # type: ignore[misc]


@pytest.mark.parametrize("function", [ShardDataModule.__init__, evaluate, ClipDecoder])
def test_commands_take_one_clip_defaulting_to_the_paper_clip(function):
    parameters = inspect.signature(function).parameters
    assert parameters["clip"].default is PAPER_CLIP
    assert not set(parameters) & {*ClipSpec.names(), "eval_window"}  # no field declared again


def test_a_mapping_overrides_some_fields_and_keeps_the_paper_values():
    spec = ClipSpec.from_mapping({"height": 64, "window": "start"})
    assert spec == replace(PAPER_CLIP, height=64, window="start")
    assert ClipSpec.from_mapping(None) == PAPER_CLIP and ClipSpec.from_mapping(spec) is spec
    assert spec.with_overrides(num_frames=4, fps=None) == replace(spec, num_frames=4)  # None: not given
    with pytest.raises(ValueError, match="unknown clip settings"):
        ClipSpec.from_mapping({"eval_window": "start"})


def test_generate_flags_make_one_clip_over_the_demo_clip():
    assert DEMO_CLIP == replace(PAPER_CLIP, crop="center")
    assert clip_spec(build_parser().parse_args([])) == DEMO_CLIP
    args = build_parser().parse_args(["--crop", "mask_aware", "--height", "64", "--num_frames", "4"])
    assert clip_spec(args) == replace(PAPER_CLIP, height=64, num_frames=4)


def test_a_clip_given_once_reaches_the_decoder():
    spec = ClipSpec(
        num_frames=4, fps=None, frame_stride=3, height=64, width=96, crop="center", window="start"
    )
    decoder = ClipDecoder(spec, random_window=True, hflip=True)
    assert decoder.clip is spec and (decoder.random_window, decoder.hflip) == (True, True)
    assert ClipDecoder().clip == PAPER_CLIP and not ClipDecoder().random_window
    data = ShardDataModule(clip=spec)
    assert data.clip is spec
    assert data._decoder(train=False).clip == spec and not data._decoder(train=False).random_window
    train = data._decoder(train=True)
    assert train.clip == spec and train.random_window
    # a random training crop is evaluated at the centre, unless eval_crop says otherwise
    random_crop = ShardDataModule(clip={"crop": "random"})
    assert random_crop._decoder(train=True).clip.crop == "random"
    assert random_crop._decoder(train=False).clip.crop == "center"
    # saved as plain values: checkpoints are read weights-only and hparams.yaml stays plain YAML
    assert data.hparams["clip"] == spec.as_kwargs() and data.hparams_initial["clip"] == spec.as_kwargs()
    assert ShardDataModule(**dict(data.hparams)).clip == spec
    with pytest.raises(ConfigError, match="window must be one of"):
        ShardDataModule(clip={"window": "random"})

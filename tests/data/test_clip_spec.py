"""One clip contract: the paper's clip, and every command that cuts clips defaults to it."""

from __future__ import annotations

import inspect
from dataclasses import FrozenInstanceError, replace

import pytest

from interdyn.commands.evaluate import evaluate
from interdyn.commands.generate import GenerateOptions, clip_spec
from interdyn.data.clip_spec import PAPER_CLIP, ClipSpec
from interdyn.data.datamodule import ShardDataModule
from interdyn.data.shards import ClipDecoder
from interdyn.inputs import DEMO_CLIP


def test_the_paper_clip_is_14_frames_at_7_fps_of_256x384():
    assert (PAPER_CLIP.num_frames, PAPER_CLIP.fps, PAPER_CLIP.height, PAPER_CLIP.width) == (14, 7.0, 256, 384)
    assert (PAPER_CLIP.crop, PAPER_CLIP.window, PAPER_CLIP.frame_stride) == ("mask_aware", "center", None)
    with pytest.raises(FrozenInstanceError):
        PAPER_CLIP.num_frames = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("function", "renamed"),
    [(ShardDataModule.__init__, {"window": "eval_window"}), (evaluate, {"window": "eval_window"})],
)
def test_commands_default_to_the_paper_clip(function, renamed):
    defaults = {name: p.default for name, p in inspect.signature(function).parameters.items()}
    for key, value in PAPER_CLIP.as_kwargs().items():
        assert defaults[renamed.get(key, key)] == value, key


def test_generate_defaults_to_the_demo_clip():
    assert DEMO_CLIP == replace(PAPER_CLIP, crop="center")
    assert clip_spec(GenerateOptions()) == DEMO_CLIP
    assert clip_spec(GenerateOptions(crop="mask_aware", height=64)) == replace(PAPER_CLIP, height=64)


def test_decoder_from_spec_takes_every_setting():
    spec = ClipSpec(
        num_frames=4, fps=None, frame_stride=3, height=64, width=96, crop="center", window="start"
    )
    decoder = ClipDecoder.from_spec(spec, window="random", hflip=True)
    assert (decoder.num_frames, decoder.fps, decoder.frame_stride) == (4, None, 3)
    assert (decoder.height, decoder.width, decoder.crop, decoder.window, decoder.hflip) == (
        64,
        96,
        "center",
        "random",
        True,
    )
    assert ClipDecoder() == ClipDecoder.from_spec(PAPER_CLIP, window="random")
    data = ShardDataModule(num_frames=4, height=64, width=96, eval_window="start")
    assert data.clip_spec == replace(PAPER_CLIP, num_frames=4, height=64, width=96, window="start")
    assert data.clip_spec.geometry() == {
        "num_frames": 4,
        "fps": 7.0,
        "frame_stride": None,
        "frame_sampling": "uniform",
        "height": 64,
        "width": 96,
    }

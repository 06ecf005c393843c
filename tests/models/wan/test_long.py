"""Long videos on Wan: windows of 1 + 4k frames, the pipeline holding known latent frames clean, and the
window loop of chain and hold against the pipeline calls it should make."""

from __future__ import annotations

import pytest
import torch

from interdyn.models.wan import InterDynWanPipeline, zero_prompt_embeds
from interdyn.models.wan.long import plan_wan_windows, sample_wan_windows
from interdyn.models.wan.ti2v import encode_image_latents, encode_video_latents
from tests.models.wan.helpers import TEXT_DIM, randomize_projections_, tiny_branch

SIZE = 32  # one token a frame: the cheapest clip


def _pipe(wan) -> InterDynWanPipeline:
    pipe = InterDynWanPipeline.from_components(wan, randomize_projections_(tiny_branch(wan)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _inputs(frames: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, SIZE, SIZE, generator=g) * 2 - 1
    control = (torch.rand(batch, frames, 1, SIZE, SIZE, generator=g) > 0.7).float().expand(-1, -1, 3, -1, -1)
    return image, control * 2 - 1, zero_prompt_embeds(TEXT_DIM, 8)


def test_windows_are_whole_latent_frames():
    assert [(w.start, w.stop, w.known) for w in plan_wan_windows(17, 9, 5)] == [
        (0, 9, 0),
        (4, 13, 5),
        (8, 17, 5),
    ]
    # the last window moves back to be full; its known frames stay 1 + 4m
    assert [(w.start, w.stop, w.known) for w in plan_wan_windows(21, 13, 5)] == [(0, 13, 0), (8, 21, 5)]
    assert [(w.start, w.stop, w.known) for w in plan_wan_windows(25, 17, 5)] == [(0, 17, 0), (8, 25, 9)]
    for args, name in [((16, 9, 5), "the video"), ((17, 8, 5), "the window"), ((17, 9, 4), "the overlap")]:
        with pytest.raises(ValueError, match=f"{name} has .* 1 \\+ 4k frames"):
            plan_wan_windows(*args)


def test_known_latent_frames_are_held_clean(wan):
    pipe = _pipe(wan)
    image, control, prompt = _inputs(9)
    kw = {"control": control, "num_inference_steps": 2, "output_type": "latent"}
    plain = pipe(image, prompt, generator=torch.Generator().manual_seed(1), **kw).frames
    # The image's own latent frame as the known latents is TI2V's conditioning: the same video.
    own = encode_image_latents(wan.vae, image)
    same = pipe(image, prompt, generator=torch.Generator().manual_seed(1), known_latents=own, **kw).frames
    torch.testing.assert_close(same, plain, rtol=0, atol=1e-6)
    # Two known latent frames (5 frames) come back as they were given, and change the rest of the video.
    known = encode_video_latents(wan.vae, torch.rand(2, 5, 3, SIZE, SIZE) * 2 - 1)
    held = pipe(image, prompt, generator=torch.Generator().manual_seed(1), known_latents=known, **kw).frames
    assert torch.equal(held[:, :, :2], known)
    assert (held[:, :, 2:] - plain[:, :, 2:]).abs().max() > 1e-3
    for bad in (known[:1], known[..., :1], torch.cat([known, known], dim=2)[:, :, :3]):
        with pytest.raises(ValueError, match="known_latents must be"):
            pipe(image, prompt, known_latents=bad, **kw)


@pytest.mark.parametrize("continuation", ["chain", "hold"])
def test_windows_are_the_pipeline_calls_they_should_be(wan, continuation):
    """13 frames in windows of 9 overlapping by 5: the first window is a plain call; the second starts from
    frame 4 of the first, its noise drawn next from the same generator, holding frames 4-8 (re-encoded) with
    hold and nothing more with chain; the video is window 1 and window 2's last 4 frames."""
    pipe = _pipe(wan)
    image, control, prompt = _inputs(13)
    kw = {"num_inference_steps": 2}
    video = sample_wan_windows(
        pipe, image, prompt, control, 9, 5, continuation, torch.Generator().manual_seed(7), **kw
    )
    assert video.frames.shape == (2, 13, 3, SIZE, SIZE)
    assert [(w.start, w.stop, w.known) for w in video.plan] == [(0, 9, 0), (4, 13, 5)]

    generator = torch.Generator().manual_seed(7)
    first = pipe(image, prompt, control=control[:, :9], generator=generator, **kw).frames
    known = encode_video_latents(wan.vae, first[:, 4:9] * 2 - 1) if continuation == "hold" else None
    second = pipe(
        first[:, 4] * 2 - 1, prompt, control=control[:, 4:], generator=generator, known_latents=known, **kw
    ).frames
    torch.testing.assert_close(video.frames, torch.cat([first, second[:, 5:]], dim=1), rtol=0, atol=1e-6)
    if continuation == "hold":
        chained = sample_wan_windows(
            pipe, image, prompt, control, 9, 5, "chain", torch.Generator().manual_seed(7), **kw
        ).frames
        assert (chained[:, 9:] - video.frames[:, 9:]).abs().max() > 1e-3, "holding changes the new frames"


def test_a_short_video_is_one_pass_and_context_is_refused(wan):
    pipe = _pipe(wan)
    image, control, prompt = _inputs(9)
    one = sample_wan_windows(pipe, image, prompt, control, 9, 5, "hold", torch.Generator().manual_seed(3))
    plain = pipe(image, prompt, control=control, generator=torch.Generator().manual_seed(3)).frames
    torch.testing.assert_close(one.frames, plain, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="continuation on Wan must be one of"):
        sample_wan_windows(pipe, image, prompt, control, 9, 5, "context")

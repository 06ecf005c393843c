"""Long videos: window plans, latent holding and the pipeline's windowed sampling (tiny random SVD, W = 14)."""

from __future__ import annotations

import pytest
import torch

from interdyn.models import InterDynPipeline
from interdyn.models.long import LatentHold, Window, assemble, plan_windows, short_last_window
from interdyn.models.sampling import SamplingSettings

SIZE, STEPS = 32, 2


@pytest.mark.parametrize(
    "frames, window, overlap",
    [(30, 14, 4), (38, 14, 4), (15, 14, 1), (27, 14, 13), (24, 14, 4), (14, 14, 4), (5, 14, 4), (60, 25, 8)],
)
def test_plans_cover_every_frame_with_full_windows(frames: int, window: int, overlap: int) -> None:
    plan = plan_windows(frames, window, overlap)
    assert plan[0] == Window(0, min(frames, window), 0)
    assert plan[-1].stop == frames
    covered = set()
    for before, w in zip(plan, plan[1:], strict=False):
        assert w.stop - w.start == window, "every window after the first is full"
        assert w.known == before.stop - w.start >= overlap, "overlaps at least as asked"
        assert w.start > before.start
    for w in plan[1:-1]:
        assert w.known == overlap, "all but the last overlap exactly as asked"
    for w in plan:
        covered |= set(range(w.start, w.stop))
    assert covered == set(range(frames))
    # assembling the windows minus their known frames gives each frame once
    pieces = [torch.arange(w.start, w.stop)[None] for w in plan]
    assert assemble(pieces, plan).tolist() == [list(range(frames))]


def test_plan_examples() -> None:
    assert plan_windows(30, 14, 4) == [Window(0, 14, 0), Window(10, 24, 4), Window(16, 30, 8)]
    assert plan_windows(34, 14, 4) == [Window(0, 14, 0), Window(10, 24, 4), Window(20, 34, 4)]


def spans(plan: list[Window]) -> list[list[int]]:
    """A plan as a run records it: ``[start, stop]`` per window."""
    return [[w.start, w.stop] for w in plan]


def test_a_short_last_window_is_named_with_the_lengths_that_avoid_it() -> None:
    """30 frames in windows of 14 overlapping by 4: the last window, moved back, adds 6 frames where the
    others add 10; 24 or 34 frames would not. Whole steps, and one window, give no note."""
    note = short_last_window(spans(plan_windows(30, 14, 4)), 4)
    assert (
        note
        == "note: the last window adds 6 new frames (the others 10); 24 or 34 frames give every window 10 new ones"
    )
    assert short_last_window(spans(plan_windows(34, 14, 4)), 4) is None
    assert short_last_window(spans(plan_windows(14, 14, 4)), 4) is None


@pytest.mark.parametrize("overlap", [0, 14, 20, -1])
def test_a_bad_overlap_is_one_sentence(overlap: int) -> None:
    with pytest.raises(
        ValueError, match=r"^window_overlap must be at least 1 and smaller than .* 14 frames, got"
    ):
        plan_windows(30, 14, overlap)


def test_settings_check_their_long_options() -> None:
    assert SamplingSettings().continuation == "hold" and SamplingSettings().window_overlap == 4
    with pytest.raises(ValueError, match="continuation must be one of"):
        SamplingSettings(continuation="loop")
    with pytest.raises(ValueError, match="window_overlap must be a whole number"):
        SamplingSettings(window_overlap=0)


class _Sampler:
    init_noise_sigma = 10.0
    sigmas = torch.tensor([10.0, 1.0, 0.0])
    step_index = 0


def test_latent_hold_noises_the_known_frames_to_each_sigma() -> None:
    known = torch.randn(2, 3, 4, 2, 2)
    start = torch.randn(2, 14, 4, 2, 2) * 10.0
    hold, sampler = LatentHold(known), _Sampler()
    held = hold.start(start, sampler)
    assert torch.allclose(held[:, :3], known + start[:, :3])  # sigma 10 times the unit noise
    assert torch.equal(held[:, 3:], start[:, 3:])
    sampler.step_index = 2
    assert torch.equal(hold.step(held, sampler)[:, :3], known)  # sigma 0: the known latents


@pytest.fixture
def pipe(tiny_svd, trained_like_branch) -> InterDynPipeline:
    pipeline = InterDynPipeline.from_components(tiny_svd, trained_like_branch)
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline.unet.config.num_frames == 14
    return pipeline


def _inputs(frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, SIZE, SIZE, generator=gen) * 2 - 1
    masks = torch.zeros(frames, SIZE, SIZE, dtype=torch.bool)
    for t in range(frames):
        x = t % 24
        masks[t, 8:20, x : x + 8] = True
    return image, masks


def _run(pipe: InterDynPipeline, frames: int, seed: int = 0, **kw):
    image, masks = _inputs(frames)
    kw.setdefault("num_inference_steps", STEPS)
    kw.setdefault("output_type", "latent")
    return pipe(image, masks, generator=torch.Generator().manual_seed(seed), **kw)


def test_a_short_driver_is_sampled_as_before(pipe: InterDynPipeline) -> None:
    """A driver of at most one window: one pass, whatever the long options say (the same numbers)."""
    single = _run(pipe, 14, continuation="single", output_type="pt")
    for kw in ({}, {"continuation": "chain", "window_overlap": 13}, {"continuation": "hold"}):
        out = _run(pipe, 14, output_type="pt", **kw)
        assert torch.equal(out.frames, single.frames) and out.windows is None


def test_hold_keeps_the_known_frames_and_chain_does_not(pipe: InterDynPipeline) -> None:
    plan = plan_windows(30, 14, 4)
    hold = _run(pipe, 30, continuation="hold")
    chain = _run(pipe, 30, continuation="chain")
    assert hold.frames.shape == chain.frames.shape == (1, 30, 4, SIZE // 8, SIZE // 8)
    assert len(hold.windows) == len(chain.windows) == len(plan) == 3
    for out, held in ((hold, True), (chain, False)):
        for i in (1, 2):
            w, offset = plan[i], plan[i].start - plan[i - 1].start
            known = out.windows[i - 1][:, offset:]
            made = out.windows[i][:, : w.known]
            assert known.shape == made.shape
            same = torch.allclose(made, known, atol=1e-5)
            assert same == held, f"window {i}: held frames {'differ' if held else 'equal'} the known ones"
            assert not torch.allclose(
                out.windows[i][:, w.known :], known[:, -1:].expand_as(out.windows[i][:, w.known :])
            )
    # the first window is the short clip's own sample; chain and hold share it
    first = _run(pipe, 14, continuation="single").frames
    assert torch.equal(hold.windows[0], first) and torch.equal(chain.windows[0], first)
    assert torch.equal(hold.frames[:, :14], first)


def test_long_outputs_and_samples(pipe: InterDynPipeline) -> None:
    out = _run(pipe, 20, output_type="pt", num_videos_per_prompt=2, window_overlap=6)
    assert out.frames.shape == (2, 20, 3, SIZE, SIZE)
    assert out.frames.min() >= 0 and out.frames.max() <= 1
    assert not torch.allclose(out.frames[0], out.frames[1])
    with pytest.raises(ValueError, match="smaller than the model's window of 14 frames"):
        _run(pipe, 20, window_overlap=14)


def test_one_generator_per_input_gives_each_input_its_own_long_videos(pipe: InterDynPipeline) -> None:
    """As for short clips (tests/models/test_pipeline.py), in float64: the first window and the held frames
    are the same to float32 rounding (the sampler's latents are float32); the later windows' new frames
    start from a decoded image that differs by that rounding, which the random tiny model amplifies, so
    they are compared with what another seed gives: far closer."""
    pipe.to(torch.float64)
    image, masks = _inputs(20)
    kw = {"num_inference_steps": STEPS, "output_type": "latent", "num_videos_per_prompt": 2}
    together = pipe(
        torch.cat([image, image.flip(-1)]),
        torch.stack([masks, masks.roll(4, dims=-1)]),
        generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)],
        **kw,
    ).frames[2:]
    second = (image.flip(-1), masks.roll(4, dims=-1))  # the second input alone, with its generator
    alone = pipe(*second, generator=torch.Generator().manual_seed(1), **kw).frames
    other_seed = pipe(*second, generator=torch.Generator().manual_seed(5), **kw).frames
    # window 1 as sampled alone, up to the float32 steps of the image conditioning (CLIP's resize): about
    # 1e-3 with one thread per process (make test's workers), far below another seed's difference
    torch.testing.assert_close(together[:, :14], alone[:, :14], atol=5e-3, rtol=0)
    assert (together[:, :14] - alone[:, :14]).abs().max() < 0.1 * (
        other_seed[:, :14] - alone[:, :14]
    ).abs().max()
    assert (together - alone).abs().mean() < 0.1 * (other_seed - alone).abs().mean()

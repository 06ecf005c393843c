"""The sampling pipeline with tiny random SVD parts and a tiny branch."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from interdyn.models import ControlNetSDVModel, InterDynPipeline, load_controlnet, load_svd
from tests.helpers import TINY_CONTROL_CHANNELS, assert_same_model

FRAMES, SIZE = 4, 64


def make_inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, SIZE, SIZE, generator=gen) * 2 - 1
    masks = torch.zeros(FRAMES, SIZE, SIZE, dtype=torch.bool)
    for t in range(FRAMES):
        masks[t, 20:40, 8 + 8 * t : 24 + 8 * t] = True
    return image, masks


@pytest.fixture
def pipe(tiny_svd, trained_like_branch):
    pipeline = InterDynPipeline.from_components(tiny_svd, trained_like_branch)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def run(pipe, seed=0, **kw):
    image, masks = make_inputs()
    kw.setdefault("num_inference_steps", 3)
    kw.setdefault("output_type", "pt")
    return pipe(image, masks, generator=torch.Generator().manual_seed(seed), **kw).frames


def test_shapes_ranges_and_output_types(pipe):
    video = run(pipe, num_videos_per_prompt=2)
    assert video.shape == (2, FRAMES, 3, SIZE, SIZE)
    assert video.min() >= 0 and video.max() <= 1 and torch.isfinite(video).all()
    array = run(pipe, output_type="np")
    assert array.shape == (1, FRAMES, SIZE, SIZE, 3) and array.dtype == np.float32
    pil = run(pipe, output_type="pil")
    assert len(pil) == 1 and len(pil[0]) == FRAMES and isinstance(pil[0][0], PIL.Image.Image)
    assert pil[0][0].size == (SIZE, SIZE)
    latents = run(pipe, output_type="latent")
    assert latents.shape == (1, FRAMES, 4, SIZE // 8, SIZE // 8)


def test_fixed_seed_is_deterministic_and_seeds_differ(pipe):
    a, b, c = run(pipe, seed=42), run(pipe, seed=42), run(pipe, seed=43)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_samples_of_one_input_differ(pipe):
    video = run(pipe, num_videos_per_prompt=2)
    assert not torch.allclose(video[0], video[1])


def test_unconditional_branch_keeps_the_masks(pipe):
    seen = []
    handle = pipe.controlnet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(args[4].clone()), with_kwargs=True
    )
    try:
        run(pipe, num_inference_steps=1)
    finally:
        handle.remove()
    cond = seen[0]
    uncond_half, cond_half = cond.chunk(2)
    assert torch.equal(uncond_half, cond_half)
    assert cond_half.max() == 1 and cond_half.min() == -1  # the masks, not zeros


def test_per_frame_guidance_rises_from_min_to_max(pipe):
    """With min = max = 1 guidance changes nothing; with max > 1 only later frames move much."""
    base = run(pipe, max_guidance_scale=1.0, min_guidance_scale=1.0)
    guided = run(pipe, max_guidance_scale=3.0, min_guidance_scale=1.0)
    diff = (guided - base).abs().flatten(2).mean(-1)[0]
    assert diff[-1] > diff[0]


def test_conditioning_scale_zero_equals_fresh_branch(tiny_svd, pipe):
    fresh = ControlNetSDVModel.from_unet(
        tiny_svd.unet, conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS
    )
    plain = InterDynPipeline.from_components(tiny_svd, fresh.eval())
    plain.set_progress_bar_config(disable=True)
    calls = []
    hook = pipe.controlnet.register_forward_hook(lambda *_: calls.append(1))
    try:
        without = run(pipe, conditioning_scale=0.0)
        assert calls == []  # the branch is not run at all: its residuals would be zeros
        torch.testing.assert_close(without, run(plain), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(run(pipe), run(plain), atol=1e-3) and calls
    finally:
        hook.remove()


def test_mismatched_image_and_masks_are_refused(pipe):
    image, masks = make_inputs()
    with pytest.raises(ValueError, match="does not match"):
        pipe(image[..., :32], masks, num_inference_steps=1)


def test_pipeline_save_and_load_offline(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = InterDynPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    for name in ("unet", "vae", "image_encoder", "controlnet"):
        assert_same_model(getattr(loaded, name), getattr(pipe, name))
    torch.testing.assert_close(run(loaded), run(pipe), rtol=0.0, atol=1e-3)  # see assert_same_model


def test_pipeline_from_svd_folder_and_branch_folder(tmp_path, tiny_svd_folder, pipe):
    pipe.controlnet.save_pretrained(tmp_path / "branch")
    assembled = InterDynPipeline.from_components(
        load_svd(str(tiny_svd_folder)), load_controlnet(str(tmp_path / "branch"))
    )
    assembled.set_progress_bar_config(disable=True)
    for name in ("unet", "vae", "image_encoder", "controlnet"):
        assert_same_model(getattr(assembled, name), getattr(pipe, name))
    torch.testing.assert_close(run(assembled), run(pipe), rtol=0.0, atol=1e-3)  # see assert_same_model


def test_edm_euler_matches_svds_euler_scheduler(pipe):
    """The EDM schedulers are wired with SVD's preconditioning: diffusers' EDM Euler over the same
    Karras sigmas reproduces SVD's own Euler scheduler."""
    latents = run(pipe, output_type="latent", num_inference_steps=4)
    edm = run(pipe, output_type="latent", num_inference_steps=4, scheduler="edm_euler")
    # the two compute the same Euler steps with different float roundings of the sigma schedule
    torch.testing.assert_close(edm, latents, rtol=1e-3, atol=3e-3)


def test_dpmpp_2m_denoises_with_fewer_steps(pipe):
    """DPM-Solver++(2M) ends at the same kind of sample as many Euler steps: its 5-step result is closer to
    a 20-step Euler reference than 5 Euler steps are (same seed, same initial noise)."""
    reference = run(pipe, output_type="latent", num_inference_steps=20)
    euler = run(pipe, output_type="latent", num_inference_steps=5)
    dpm = run(pipe, output_type="latent", num_inference_steps=5, scheduler="dpmpp_2m")
    assert torch.isfinite(dpm).all()
    assert (dpm - reference).norm() < (euler - reference).norm()
    with pytest.raises(ValueError, match="scheduler must be one of"):
        run(pipe, scheduler="ddim")


def test_batched_inputs_with_one_generator_each_give_each_clip_its_own_videos(pipe):
    """Two clips sampled in one batch, each with its own seed, give the videos each gets alone with that
    seed (two videos each: the guided batch is eight wide). In float64, to see the logic: in float32 the kernels' rounding
    depends on the batch size, and the random tiny model (its deepest GroupNorms see 1x1 maps) amplifies it
    to ~0.05 over a few steps, where float64 gives the same videos to the last bit."""
    pipe.to(torch.float64)
    images, controls, seeds = [], [], [7, 8]
    for k in range(2):
        image, masks = make_inputs(seed=k)
        images.append(image)
        controls.append(torch.roll(masks, shifts=4 * k, dims=-1))
    kw = {"num_inference_steps": 2, "output_type": "pt", "num_videos_per_prompt": 2}
    alone = [
        pipe(image, masks[None], generator=torch.Generator().manual_seed(seed), **kw).frames
        for image, masks, seed in zip(images, controls, seeds, strict=True)
    ]
    together = pipe(
        torch.cat(images),
        torch.stack(controls),
        generator=[torch.Generator().manual_seed(seed) for seed in seeds],
        **kw,
    ).frames
    assert together.shape == (4, FRAMES, 3, SIZE, SIZE)
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-6, rtol=0)
    assert not torch.allclose(alone[0], alone[1], atol=1e-2)  # the clips do differ
    with pytest.raises(ValueError, match="one per input"):
        pipe(torch.cat(images), torch.stack(controls), generator=[torch.Generator()] * 3, **kw)

"""The context branch: its input, its zero start from any branch (the released one included), its config,
and the ``context`` continuation of long sampling (tiny random SVD, W = 14)."""

from __future__ import annotations

import pytest
import torch

from interdyn.errors import ConfigError
from interdyn.models import ControlNetSDVModel, InterDynPipeline
from interdyn.models.controlnet import context_input
from interdyn.models.long import plan_windows
from interdyn.models.released import load_controlnet
from interdyn.models.sampling import SamplingSettings
from tests.helpers import randomize_, released_folder, unet_args, unet_inputs

SIZE, STEPS = 32, 1


def test_context_input_marks_the_known_frames() -> None:
    latents = torch.randn(2, 5, 4, 3, 3)
    ctx = context_input(latents, torch.tensor([0, 2]))
    assert ctx.shape == (2, 5, 5, 3, 3)
    assert torch.count_nonzero(ctx[0]) == 0, "k = 0 is the zero input"
    assert torch.equal(ctx[1, :2, :4], latents[1, :2]) and torch.count_nonzero(ctx[1, 2:]) == 0
    assert ctx[1, :, 4, 0, 0].tolist() == [1, 1, 0, 0, 0]
    assert torch.equal(context_input(latents, 3), context_input(latents, torch.tensor([3, 3])))


def _residuals(branch: ControlNetSDVModel, inputs: dict, context: torch.Tensor | None = None) -> list:
    out = branch(**unet_args(inputs), controlnet_cond=inputs["controlnet_cond"], controlnet_context=context)
    return [*out.down_block_res_samples, out.mid_block_res_sample]


@pytest.fixture
def inputs() -> dict:
    return unet_inputs(batch=2, frames=3, size=32, seed=0)


def test_a_branch_made_a_context_branch_gives_its_outputs_for_any_context(
    trained_like_branch, inputs
) -> None:
    context_branch = ControlNetSDVModel.from_branch(trained_like_branch, 4, 14).eval()
    assert context_branch.is_context_branch and not trained_like_branch.is_context_branch
    assert context_branch.config.context_frames == 4 and context_branch.config.context_window == 14
    plain = _residuals(trained_like_branch, inputs)
    latents = torch.randn(2, 3, 4, *inputs["sample"].shape[-2:])
    for k in (None, 0, 2, torch.tensor([1, 2])):
        context = None if k is None else context_input(latents, k)
        for a, b in zip(plain, _residuals(context_branch, inputs, context), strict=True):
            assert torch.equal(a, b), f"k = {k}"
    # once its context conv is trained, the known frames change the residuals
    randomize_(context_branch.controlnet_context_embedding, seed=5)
    moved = _residuals(context_branch, inputs, context_input(latents, 2))
    assert not torch.allclose(moved[-1], plain[-1])


def test_the_released_branch_converts_and_the_config_round_trips(
    trained_like_branch, inputs, tmp_path
) -> None:
    released = load_controlnet(str(released_folder(tmp_path, trained_like_branch)), subfolder="controlnet")
    context_branch = ControlNetSDVModel.from_branch(released, 3, 14)
    latents = torch.randn(2, 3, 4, *inputs["sample"].shape[-2:])
    for a, b in zip(
        _residuals(released, inputs),
        _residuals(context_branch, inputs, context_input(latents, 3)),
        strict=True,
    ):
        assert torch.equal(a, b)
    randomize_(context_branch.controlnet_context_embedding, seed=6)
    context_branch.save_pretrained(tmp_path / "ctx")
    loaded = load_controlnet(str(tmp_path / "ctx"))
    assert (
        loaded.is_context_branch and loaded.config.context_window == 14 and loaded.config.context_frames == 3
    )
    assert loaded.config.residual_addition == "single", "not taken for a released folder (not folded again)"
    saved = context_branch.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.state_dict().items()) and len(saved) == len(
        loaded.state_dict()
    )


def test_context_is_refused_where_it_cannot_go(trained_like_branch, inputs) -> None:
    with pytest.raises(ValueError, match="branch without context"):
        _residuals(trained_like_branch, inputs, torch.zeros(2, 3, 5, *inputs["sample"].shape[-2:]))
    for frames in (0, 14):
        with pytest.raises(ValueError, match="smaller than the window of 14 frames"):
            ControlNetSDVModel.from_branch(trained_like_branch, frames, 14)
    assert SamplingSettings(continuation="context").continuation == "context"


# ---------------------------------------------------------------------------- sampling
def _pipe(tiny_svd, branch: ControlNetSDVModel) -> InterDynPipeline:
    pipe = InterDynPipeline.from_components(tiny_svd, branch.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe: InterDynPipeline, frames: int, **kw):
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, SIZE, SIZE, generator=gen) * 2 - 1
    masks = torch.zeros(frames, SIZE, SIZE, dtype=torch.bool)
    for t in range(frames):
        masks[t, 8:20, t % 24 : t % 24 + 8] = True
    kw = {"num_inference_steps": STEPS, "max_guidance_scale": 1.0, "output_type": "latent", **kw}
    return pipe(image, masks, generator=torch.Generator().manual_seed(0), **kw)


def test_context_continuation_over_three_windows(tiny_svd, trained_like_branch) -> None:
    branch = ControlNetSDVModel.from_branch(trained_like_branch, 4, 14)
    pipe = _pipe(tiny_svd, branch)
    hold = _run(pipe, 30, continuation="hold")
    assert torch.equal(hold.frames, _run(pipe, 30, continuation="context").frames), "a fresh one holds"
    with torch.no_grad():  # as if trained: the known frames now move the residuals (k = 0 still gives 0)
        branch.controlnet_context_embedding.weight.normal_(
            0, 0.05, generator=torch.Generator().manual_seed(7)
        )
    ctx = _run(pipe, 30, continuation="context")
    plan = plan_windows(30, 14, 4)
    assert ctx.frames.shape == (1, 30, 4, SIZE // 8, SIZE // 8) and len(ctx.windows) == 3
    assert torch.equal(ctx.windows[0], hold.windows[0]), "window 1 gets no context (k = 0)"
    for i in (1, 2):  # later windows hold their known frames, and the context moves the new ones
        offset, known = plan[i].start - plan[i - 1].start, plan[i].known
        torch.testing.assert_close(ctx.windows[i][:, :known], ctx.windows[i - 1][:, offset:])
        assert not torch.allclose(ctx.windows[i][:, known:], hold.windows[i][:, known:])


def test_context_needs_a_context_branch_of_the_base_window(tiny_svd, trained_like_branch) -> None:
    with pytest.raises(
        ConfigError, match=r"^continuation 'context' needs a context branch .* use continuation"
    ):
        _run(_pipe(tiny_svd, trained_like_branch), 20, continuation="context")
    other = ControlNetSDVModel.from_branch(trained_like_branch, 4, 25)
    with pytest.raises(
        ConfigError, match=r"^this context branch was trained on windows of 25 frames, but .* 14"
    ):
        _run(_pipe(tiny_svd, other), 20, continuation="context")

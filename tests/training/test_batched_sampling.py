"""Test-time sampling in batches: the test callbacks sample all clips of a batch together, each with its
key's seed, and get the videos each clip gets sampled alone (issue: one clip at a time made a full test
split cost many GPU-hours)."""

from __future__ import annotations

import pytest
import torch

from interdyn.callbacks.clip_sampler import ClipSampler, SampleMemo
from tests.helpers import randomize_, tiny_module, toy_batch


@pytest.mark.slow  # float64 sampling, five calls
def test_a_batch_of_clips_gives_the_videos_of_each_clip_sampled_alone():
    # float64 shows the logic; in float32 the random tiny model amplifies the batch-size-dependent rounding
    # of the kernels (see tests/models/test_pipeline.py)
    module = tiny_module(num_samples=2)
    randomize_(module.controlnet, seed=1)
    module.double().eval()
    batch = toy_batch(n=2, frames=4)
    pixels, control = batch["pixel_values"].double(), batch["control"].double()
    sampler = ClipSampler(num_samples=2, seed=5, num_inference_steps=1)

    together = sampler.sample_batch(module, pixels, control, batch["key"])
    SampleMemo.of(module).begin(("a fresh batch",))  # nothing remembered: sample clip by clip
    alone = [
        sampler.sample(module, pixels[i : i + 1], control[i : i + 1], key)
        for i, key in enumerate(batch["key"])
    ]
    assert [t.shape for t in together] == [(2, 4, 3, 64, 64)] * 2
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
    assert not torch.allclose(together[0], together[1])

    # within the batch, a second callback reuses the videos instead of sampling again
    calls = []
    original = module.sample
    module.sample = lambda *args, **kw: calls.append(1) or original(*args, **kw)
    again = sampler.sample_batch(module, pixels, control, batch["key"])
    assert not calls and all(x is y for x, y in zip(again, alone, strict=True))
    # a clip not yet sampled is sampled alone, the others are reused
    SampleMemo.of(module).entries.pop(1)
    mixed = sampler.sample_batch(module, pixels, control, batch["key"])
    assert len(calls) == 1 and mixed[0] is alone[0]
    torch.testing.assert_close(mixed[1], alone[1], atol=1e-9, rtol=0)

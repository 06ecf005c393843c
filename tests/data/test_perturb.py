"""Test-time perturbations of the driver masks (robustness study); dilation and erosion themselves are
tested in tests/utils/test_morphology.py."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
import torch

from interdyn.data.perturb import (
    KINDS,
    MaskPerturbation,
    boxify,
    dilate,
    drop_frames,
    jitter_indices,
    perturb_masks,
    severity_levels,
    temporal_jitter,
)


def rectangle(top: int, left: int, height: int, width: int, size: tuple[int, int] = (48, 64)) -> torch.Tensor:
    m = torch.zeros(size, dtype=torch.bool)
    m[top : top + height, left : left + width] = True
    return m


def moving_clip(frames: int = 14, size: tuple[int, int] = (32, 48)) -> torch.Tensor:
    """An L-shaped driver moving right by 2 px a frame: every frame differs from the others."""
    return torch.stack(
        [rectangle(10, 2 + 2 * t, 8, 3, size) | rectangle(15, 2 + 2 * t, 3, 8, size) for t in range(frames)]
    )


def test_numpy_in_numpy_out():
    m = moving_clip().numpy()
    for kind in KINDS:
        out = perturb_masks(m, kind, severity_levels(kind)[-1], rng=0)
        assert isinstance(out, np.ndarray) and out.dtype == bool and out.shape == m.shape
    assert np.array_equal(dilate(m.astype(np.uint8) * 255, 1), dilate(m, 1))


def test_drop_p0_identity_and_p1_empties_all_but_the_first():
    clip = moving_clip()
    assert torch.equal(drop_frames(clip, 0.0, random.Random(0)), clip)
    out = drop_frames(clip, 1.0, random.Random(0))
    assert torch.equal(out[0], clip[0])
    assert out[1:].sum() == 0


def test_drop_half_empties_about_half_of_the_frames():
    clip = torch.ones(2001, 2, 2, dtype=torch.bool)
    out = drop_frames(clip, 0.5, random.Random(3))
    dropped = (~out[1:].any(dim=(1, 2))).float().mean().item()
    assert abs(dropped - 0.5) < 0.05  # 2000 Bernoulli draws: sd 0.011
    assert out[0].all()
    # kept frames are untouched, dropped ones fully empty
    assert set(out[1:].sum(dim=(1, 2)).tolist()) == {0, 4}


def test_drop_levels_are_nested_for_the_same_seed():
    clip = torch.ones(200, 2, 2, dtype=torch.bool)
    low = drop_frames(clip, 0.25, random.Random(7))
    high = drop_frames(clip, 0.5, random.Random(7))
    assert ((~low[:, 0, 0]) & high[:, 0, 0]).sum() == 0  # dropped at 0.25 => dropped at 0.5
    assert (~high[:, 0, 0]).sum() > (~low[:, 0, 0]).sum() > 0


def test_jitter_zero_is_identity():
    clip = moving_clip()
    assert torch.equal(temporal_jitter(clip, 0, random.Random(0)), clip)


@pytest.mark.parametrize("max_shift", [1, 2, 3])
def test_jitter_takes_each_frame_from_the_shift_window(max_shift):
    clip = moving_clip()
    t_count = clip.shape[0]
    moved = 0
    for seed in range(20):
        out = temporal_jitter(clip, max_shift, random.Random(seed))
        assert torch.equal(out[0], clip[0])
        for t in range(t_count):
            sources = [s for s in range(t_count) if torch.equal(out[t], clip[s])]
            assert len(sources) == 1 and abs(sources[0] - t) <= max_shift
            moved += sources[0] != t
    assert moved > 0
    idx = jitter_indices(1000, max_shift, random.Random(0))
    shifts = {i - t for t, i in enumerate(idx) if max_shift <= t < 1000 - max_shift}
    assert shifts == set(range(-max_shift, max_shift + 1))  # the whole window is used, clamped at the ends
    assert min(idx) >= 0 and max(idx) <= 999


def test_boxify_fills_the_bounding_box():
    ell = rectangle(5, 5, 20, 4) | rectangle(21, 5, 4, 15)  # an L: vertical bar + foot
    empty = torch.zeros_like(ell)
    out = boxify(torch.stack([ell, empty]))
    assert torch.equal(out[0], rectangle(5, 5, 20, 15))
    assert out[1].sum() == 0
    assert torch.equal(boxify(torch.stack([ell]), 0)[0], ell)


def test_two_blobs_become_one_box():
    two = rectangle(2, 2, 3, 3) | rectangle(10, 20, 2, 2)
    assert torch.equal(boxify(two[None])[0], rectangle(2, 2, 10, 20))


@pytest.mark.parametrize("kind", KINDS)
def test_severity_zero_is_identity_for_every_kind(kind):
    clip = moving_clip()
    assert severity_levels(kind)[0] == 0
    assert torch.equal(perturb_masks(clip, kind, 0, random.Random(1)), clip)
    assert torch.equal(MaskPerturbation(kind, 0, seed=3)(clip, "ssv2-1"), clip)


@pytest.mark.parametrize("kind", KINDS)
def test_nonzero_levels_change_the_masks(kind):
    clip = moving_clip()
    for severity in severity_levels(kind)[1:]:
        out = MaskPerturbation(kind, severity, seed=0)(clip, "clevrer-00042")
        assert out.shape == clip.shape and out.dtype == torch.bool
        assert not torch.equal(out, clip), (kind, severity)


@pytest.mark.parametrize(("kind", "severity"), [("drop", 0.5), ("jitter", 2)])
def test_same_seed_and_key_same_result_other_key_differs(kind, severity):
    clip = moving_clip()
    p = MaskPerturbation(kind, severity, seed=5)
    assert torch.equal(p(clip, "ssv2-1"), p(clip, "ssv2-1"))
    assert torch.equal(p(clip, "ssv2-1"), MaskPerturbation(kind, severity, seed=5)(clip, "ssv2-1"))
    others = [p(clip, f"ssv2-{i}") for i in range(2, 6)]
    assert any(not torch.equal(p(clip, "ssv2-1"), o) for o in others)
    other_seed = MaskPerturbation(kind, severity, seed=6)
    assert any(not torch.equal(other_seed(clip, f"ssv2-{i}"), p(clip, f"ssv2-{i}")) for i in range(1, 6))


def test_rng_is_stable_across_processes():
    # seeded with crc32, not the per-process salted hash(): these numbers must never change
    assert zlib.crc32(b"ssv2-12345") == 3573309048
    rng = MaskPerturbation("drop", 0.5, seed=1).rng_for("ssv2-12345")
    assert rng.random() == random.Random((1 << 32) | 3573309048).random() == 0.43474014581056575


def test_bad_kind_and_severity_raise():
    clip = moving_clip()
    with pytest.raises(ValueError, match="dilate, erode, drop, jitter, boxify"):
        perturb_masks(clip, "blur", 1)
    with pytest.raises(ValueError, match="unknown mask perturbation"):
        MaskPerturbation("blur", 1)
    with pytest.raises(ValueError, match="unknown"):
        severity_levels("blur")
    for kind, bad in [("dilate", -1), ("dilate", 2.5), ("erode", "2"), ("drop", 1.5), ("drop", -0.1),
                      ("jitter", 1.5), ("boxify", 2), ("boxify", 0.5)]:  # fmt: skip
        with pytest.raises(ValueError, match=kind):
            perturb_masks(clip, kind, bad)
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        perturb_masks(clip[0], "dilate", 1)
    with pytest.raises(ValueError, match="footprint"):
        dilate(clip, 1, footprint="diamond")
    assert torch.equal(perturb_masks(clip, "dilate", 2.0), dilate(clip, 2))  # integral floats are fine

"""Binary mask morphology: dilation and erosion by a square or a disk, against brute-force references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from interdyn.utils.morphology import dilate, erode


def rectangle(top: int, left: int, height: int, width: int, size: tuple[int, int] = (48, 64)) -> torch.Tensor:
    m = torch.zeros(size, dtype=torch.bool)
    m[top : top + height, left : left + width] = True
    return m


def bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return ys.min().item(), xs.min().item(), ys.max().item(), xs.max().item()


@pytest.mark.parametrize("k", [1, 3, 5])
def test_dilating_a_pixel_gives_the_square(k):
    m = torch.zeros(1, 31, 31, dtype=torch.bool)
    m[0, 15, 15] = True
    out = dilate(m, k)
    assert out.sum() == (2 * k + 1) ** 2
    assert torch.equal(out[0], rectangle(15 - k, 15 - k, 2 * k + 1, 2 * k + 1, (31, 31)))


@pytest.mark.parametrize("k", [1, 3, 6])
def test_dilating_a_pixel_with_a_disk(k):
    m = torch.zeros(1, 31, 31, dtype=torch.bool)
    m[0, 15, 15] = True
    out = dilate(m, k, footprint="disk")[0]
    yy, xx = torch.meshgrid(torch.arange(31), torch.arange(31), indexing="ij")
    expected = (yy - 15) ** 2 + (xx - 15) ** 2 <= k * k
    assert torch.equal(out, expected)
    assert (2 * k + 1) ** 2 > out.sum() > 3 * k * k  # between the inscribed and the circumscribed square


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 12])
def test_dilate_and_erode_match_brute_force_references(k):
    masks = torch.rand(3, 29, 37, generator=torch.Generator().manual_seed(k)) > 0.9
    masks[2] = torch.rand(29, 37, generator=torch.Generator().manual_seed(k + 1)) > 0.2  # mostly set
    x = masks[:, None].float()
    offsets = torch.arange(-k, k + 1)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= k * k).float()[None, None]
    # references: max pooling (pads with -inf) and convolution with the disk (zero padding)
    square = F.max_pool2d(x, 2 * k + 1, stride=1, padding=k)[:, 0] > 0
    round_ = F.conv2d(x, disk, padding=k)[:, 0] > 0.5
    assert torch.equal(dilate(masks, k), square)
    assert torch.equal(dilate(masks, k, footprint="disk"), round_)
    inv = (~masks)[:, None].float()
    assert torch.equal(erode(masks, k), ~(F.max_pool2d(inv, 2 * k + 1, stride=1, padding=k)[:, 0] > 0))
    assert torch.equal(erode(masks, k, footprint="disk"), ~(F.conv2d(inv, disk, padding=k)[:, 0] > 0.5))


def test_dilation_grows_the_bbox_by_k_on_each_side_and_is_monotonic():
    m = rectangle(20, 25, 5, 9)[None]
    areas = []
    for k in [0, 1, 2, 4, 8]:
        out = dilate(m, k)
        assert bbox(out[0]) == (20 - k, 25 - k, 24 + k, 33 + k)
        assert (out | m).sum() == out.sum()  # contains the original
        areas.append(out.sum().item())
    assert areas == sorted(areas) and len(set(areas)) == len(areas)


def test_dilation_stops_at_the_image_border():
    out = dilate(rectangle(0, 0, 2, 2)[None], 3)[0]
    assert torch.equal(out, rectangle(0, 0, 5, 5))


@pytest.mark.parametrize("footprint", ["square", "disk"])
def test_erosion_shrinks_a_rectangle_by_k_on_each_side(footprint):
    m = rectangle(10, 12, 20, 30)[None]
    for k in [1, 2, 4]:
        out = erode(m, k, footprint=footprint)
        assert torch.equal(out[0], rectangle(10 + k, 12 + k, 20 - 2 * k, 30 - 2 * k))


def test_erosion_removes_masks_thinner_than_2k_plus_1():
    k = 3
    thin = rectangle(10, 10, 2 * k, 30)[None]
    assert erode(thin, k).sum() == 0
    just_thick = rectangle(10, 10, 2 * k + 1, 30)[None]
    assert torch.equal(erode(just_thick, k)[0], rectangle(10 + k, 10 + k, 1, 30 - 2 * k))


def test_erosion_keeps_masks_touching_the_image_border():
    # a hand entering from the left edge: the border side is not a mask boundary
    out = erode(rectangle(10, 0, 12, 20)[None], 2)[0]
    assert torch.equal(out, rectangle(12, 0, 8, 18))


def test_erode_undoes_dilate_on_a_convex_shape():
    m = rectangle(15, 20, 6, 8)[None]
    assert torch.equal(erode(dilate(m, 4), 4), m)

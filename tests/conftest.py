"""Shared fixtures: tiny random SVD parts (real diffusers/transformers classes) and helpers."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Under pytest-xdist (`make test` runs one worker per core) each worker gets its share of the cores, so
# that two workers' thread pools do not fight over the same cores.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _threads = max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(_threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))  # and the processes that tests start

from interdyn.models import ControlNetSDVModel, SVDComponents, build_svd, save_svd  # noqa: E402
from interdyn.models.svd import TINY_ARCHITECTURE  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
FRAMES, FPS = 30, 14.0
TINY_CONTROL_CHANNELS = (8, 16, 16, 32)


@pytest.fixture(scope="session")
def tiny_svd_session() -> SVDComponents:
    return build_svd({**TINY_ARCHITECTURE, "seed": 0})


@pytest.fixture
def tiny_svd(tiny_svd_session: SVDComponents) -> SVDComponents:
    """A private deep copy per test, so that no test can leak weight changes into another."""
    return copy.deepcopy(tiny_svd_session)


@pytest.fixture(scope="session")
def tiny_svd_folder(tmp_path_factory: pytest.TempPathFactory, tiny_svd_session: SVDComponents) -> Path:
    """The tiny SVD saved in the hub layout (unet/ vae/ image_encoder/ scheduler/)."""
    folder = tmp_path_factory.mktemp("tiny_svd")
    save_svd(tiny_svd_session, str(folder))
    return folder


def randomize_(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Overwrite every parameter with N(0, scale^2) noise (non-zero residual convs, etc.)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module


@pytest.fixture(scope="session")
def tiny_branch_folder(tmp_path_factory: pytest.TempPathFactory, tiny_svd_session: SVDComponents) -> Path:
    """A tiny branch with non-zero weights everywhere (seed 3), saved with save_pretrained."""
    branch = ControlNetSDVModel.from_unet(
        tiny_svd_session.unet, conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS
    )
    folder = tmp_path_factory.mktemp("branch")
    randomize_(branch, seed=3).save_pretrained(folder)
    return folder


@pytest.fixture
def trained_like_branch(tiny_svd: SVDComponents) -> ControlNetSDVModel:
    """A branch with random non-zero weights everywhere (as if trained)."""
    branch = ControlNetSDVModel.from_unet(
        tiny_svd.unet, conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS
    )
    return randomize_(branch, seed=1).eval()


def unet_inputs(
    batch: int = 2, frames: int = 3, size: int = 64, seed: int = 0, control_channels: int = 3
) -> dict:
    """Random inputs for the tiny UNet / branch (latents at size/8)."""
    gen = torch.Generator().manual_seed(seed)
    h = size // 8
    return {
        "sample": torch.randn(batch, frames, 8, h, h, generator=gen),
        "timestep": torch.rand(batch, generator=gen),
        "encoder_hidden_states": torch.randn(batch, 1, 32, generator=gen),
        "added_time_ids": torch.tensor([[6.0, 40.0, 0.02]]).expand(batch, 3),
        "controlnet_cond": torch.rand(batch, frames, control_channels, size, size, generator=gen) * 2 - 1,
    }


def assert_same_model(
    loaded: torch.nn.Module, original: torch.nn.Module, outputs: tuple = (), atol: float = 1e-6
) -> None:
    """A model read back from disk holds exactly the original's weights, and gives its outputs.

    Outputs are compared to ``atol`` and not bit for bit: tensors read from a file sit at other memory
    alignments, for which the CPU's kernels may sum in another order (seen with one thread per process).
    """
    a, b = loaded.state_dict(), original.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for x, y in outputs:
        torch.testing.assert_close(x, y, rtol=0.0, atol=atol)


def unet_args(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k != "controlnet_cond"}


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built-in dataset shards written with the real writer: train 8 clips in 2 shards; validation 10
    clips in 4 shards; test 2 counterfactual groups x 2 variants (64x96, 30 frames at 14 fps)."""
    from data_prep.synthetic import World, write_split

    out = tmp_path_factory.mktemp("shards")
    world = World(height=64, width=96)
    write_split(
        out, "train", 8, seed=0, world=world, num_frames=FRAMES, fps=FPS, shard_size=4, progress=False
    )
    write_split(
        out, "validation", 10, seed=0, world=world, num_frames=FRAMES, fps=FPS, shard_size=3, progress=False
    )
    write_split(
        out,
        "test",
        2,
        seed=0,
        world=world,
        num_frames=FRAMES,
        fps=FPS,
        variants=2,
        shard_size=4,
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def random_i3d_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An I3D weights file with random values (the real ones come from `interdyn weights fetch i3d`)."""
    from safetensors.torch import save_file

    from interdyn.metrics.i3d import InceptionI3d

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("i3d") / "random-i3d.safetensors"
    save_file(InceptionI3d().state_dict(), path)
    return path

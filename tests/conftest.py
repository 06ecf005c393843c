"""Shared fixtures: tiny random SVD parts (real diffusers/transformers classes) and helpers."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from interdyn.models import ControlNetSDVModel, SVDComponents

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Under pytest-xdist (`make test` runs one worker per core) each worker gets its share of the cores, so
# that two workers' thread pools do not fight over the same cores. The stack (torch, diffusers) is
# imported by the workers only: the process that starts them does not wait for it.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    import torch

    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _threads = max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(_threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))  # and the processes that tests start

# The longest tests, started first so that the workers finish together instead of one waiting for the
# other's last long test (`--dist loadgroup` hands tests out in this order).
LONGEST_FIRST = (
    "tests/app/test_browser.py",
    "tests/commands/test_ddp.py",
    "tests/world/test_shipped.py",
    "tests/commands/test_cli.py",
    "tests/benchmarks/test_device_kit.py",
    "tests/commands/test_generate_inputs.py::test_exit_code_as_a_process",
    "tests/data_prep/test_build.py::test_pool_workers_exit_when_the_preparer_is_killed",
    "tests/commands/test_evaluation.py",
)


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """``run(*args, cwd=...)``: ``interdyn *args`` in this process (the same ``main`` the installed command
    calls, without the seconds of importing the stack anew); returns its exit code and output."""

    from tests.helpers import run_interdyn

    def call(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        return run_interdyn(*args, cwd=cwd, monkeypatch=monkeypatch, capsys=capsys)

    return call


@pytest.fixture(scope="session")
def tiny_svd_session() -> SVDComponents:
    from interdyn.models import build_svd
    from interdyn.models.svd import TINY_ARCHITECTURE

    return build_svd({**TINY_ARCHITECTURE, "seed": 0})


@pytest.fixture
def tiny_svd(tiny_svd_session: SVDComponents) -> SVDComponents:
    """A private deep copy per test, so that no test can leak weight changes into another."""
    return copy.deepcopy(tiny_svd_session)


@pytest.fixture(scope="session")
def tiny_svd_folder(tmp_path_factory: pytest.TempPathFactory, tiny_svd_session: SVDComponents) -> Path:
    """The tiny SVD saved in the hub layout (unet/ vae/ image_encoder/ scheduler/)."""
    folder = tmp_path_factory.mktemp("tiny_svd")
    from interdyn.models import save_svd

    save_svd(tiny_svd_session, str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_branch_folder(tmp_path_factory: pytest.TempPathFactory, tiny_svd_session: SVDComponents) -> Path:
    """A tiny branch with non-zero weights everywhere (seed 3), saved with save_pretrained."""
    from interdyn.models import ControlNetSDVModel
    from tests.helpers import TINY_CONTROL_CHANNELS, randomize_

    branch = ControlNetSDVModel.from_unet(
        tiny_svd_session.unet, conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS
    )
    folder = tmp_path_factory.mktemp("branch")
    randomize_(branch, seed=3).save_pretrained(folder)
    return folder


@pytest.fixture
def trained_like_branch(tiny_svd: SVDComponents) -> ControlNetSDVModel:
    """A branch with random non-zero weights everywhere (as if trained)."""
    from interdyn.models import ControlNetSDVModel
    from tests.helpers import TINY_CONTROL_CHANNELS, randomize_

    branch = ControlNetSDVModel.from_unet(
        tiny_svd.unet, conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS
    )
    return randomize_(branch, seed=1).eval()


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built-in dataset shards written with the real writer: train 8 clips in 2 shards; validation 10
    clips in 4 shards; test 2 counterfactual groups x 2 variants (64x96, 30 frames at 14 fps)."""
    from data_prep.synthetic import World, write_split
    from tests.helpers import FPS, FRAMES

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
def world_test_shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The world's test split as `make world-data` writes it (64x64, 14 frames at 7 fps, the world's
    physics), with other seeds: 3 counterfactual groups of 3 driver paths, in real shards (one build for
    the tests of the shipped world weights and of the one-step probe)."""
    from data_prep.synthetic import write_split
    from data_prep.synthetic_world import builtin_world

    out = tmp_path_factory.mktemp("world_shards")
    world = builtin_world(64)
    write_split(out, "test", 3, seed=11, world=world, num_frames=14, fps=7.0, variants=3, progress=False)
    return str(out / "test" / "*.tar")


@pytest.fixture(scope="session")
def random_i3d_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An I3D weights file with random values (the real ones come from `interdyn weights fetch i3d`)."""
    import torch
    from safetensors.torch import save_file

    from interdyn.metrics.i3d import InceptionI3d

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("i3d") / "random-i3d.safetensors"
    save_file(InceptionI3d().state_dict(), path)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the longest tests first (:data:`LONGEST_FIRST`). Keep ``xdist_group`` tests on one worker under ``--dist loadgroup`` (``make test``): pytest-xdist 3.8
    marks a group by renaming the test's nodeid (``...@group``), which pytest 9.2's structured node ids no
    longer pick up, so every group was spread over the workers. Rename it the new way."""
    rank = {
        item: next((i for i, p in enumerate(LONGEST_FIRST) if item.nodeid.startswith(p)), None)
        for item in items
    }
    items.sort(key=lambda item: len(LONGEST_FIRST) if rank[item] is None else rank[item])  # stable
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # older pytest: xdist's own renaming works
        return
    for item in items:
        groups = sorted(
            {
                str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                for m in item.iter_markers("xdist_group")
            }
        )
        if groups and "@" not in item.nodeid:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")

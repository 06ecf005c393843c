"""Adam with its moments in host memory (`optimizer: adam_offload`, configs/ssv2_24gb.yaml): the same steps
as torch.optim.Adam, its state left in host memory by Lightning's move to the device, and checkpoints that
either optimizer resumes."""

from __future__ import annotations

import io

import pytest
import torch
from lightning.fabric.utilities.optimizer import _optimizer_to_device

from interdyn.training.optim import make_optimizer
from interdyn.training.optim_offload import HostMoments, OffloadedAdam


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 32), (32,), (16, 8, 3, 3), (5,)]
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def run_steps(
    optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for i, p in enumerate(params):
            # the last parameter gets no gradient on every other step (skipped, as Adam skips it)
            p.grad = None if (i == len(params) - 1 and step % 2) else torch.randn(p.shape, generator=g)
        optimizer.step()


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_the_same_steps_as_torch_adam_bit_for_bit(weight_decay: float) -> None:
    reference, offloaded = make_params(), make_params()
    adam = torch.optim.Adam(reference, lr=1e-2, betas=(0.9, 0.99), weight_decay=weight_decay)
    # a chunk smaller than the largest parameter: every parameter is its own chunk
    mine = OffloadedAdam(offloaded, lr=1e-2, betas=(0.9, 0.99), weight_decay=weight_decay, chunk_mib=0.004)
    assert len(list(mine._chunks(offloaded))) == 4
    run_steps(adam, reference, 6, seed=1)
    run_steps(mine, offloaded, 6, seed=1)
    for a, b in zip(reference, offloaded, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(adam.state[a]["exp_avg"], mine.state[b]["moments"].exp_avg)
        assert torch.equal(adam.state[a]["exp_avg_sq"], mine.state[b]["moments"].exp_avg_sq)
        assert float(adam.state[a]["step"]) == float(mine.state[b]["step"])
    assert float(mine.state[offloaded[-1]]["step"]) == 3  # no gradient on 3 of the 6 steps


def test_moments_stay_in_host_memory_when_lightning_moves_the_state() -> None:
    params = make_params()
    optimizer = OffloadedAdam(params, lr=1e-3)
    run_steps(optimizer, params, 1, seed=0)
    # what Lightning's strategies do after loading a checkpoint (here to the meta device: no GPU needed);
    # a plain Adam's moments would move
    _optimizer_to_device(optimizer, torch.device("meta"))
    for p in params:
        moments = optimizer.state[p]["moments"]
        assert isinstance(moments, HostMoments) and moments.exp_avg.device.type == "cpu"
    adam = torch.optim.Adam(make_params(), lr=1e-3)
    run_steps(adam, adam.param_groups[0]["params"], 1, seed=0)
    _optimizer_to_device(adam, torch.device("meta"))
    assert next(iter(adam.state.values()))["exp_avg"].device.type == "meta"


def weights_only_copy(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # as checkpoints are loaded (interdyn.training.checkpoint)


def test_checkpoints_resume_across_adam_and_offloaded_adam() -> None:
    # 3 steps with offloaded Adam, its checkpoint resumed by torch's Adam for 3 more, and the other way round:
    # both equal 6 steps of torch's Adam
    reference = make_params()
    adam = torch.optim.Adam(reference, lr=1e-2)
    run_steps(adam, reference, 3, seed=2)
    expected = [p.detach().clone() for p in reference]
    run_steps(adam, reference, 3, seed=3)

    first = make_params()
    mine = OffloadedAdam(first, lr=1e-2)
    run_steps(mine, first, 3, seed=2)
    saved = weights_only_copy(mine.state_dict())
    assert set(saved["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}  # torch.optim.Adam's layout
    assert all(torch.equal(a, b) for a, b in zip(first, expected, strict=True))
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    plain = torch.optim.Adam(resumed, lr=1e-2)
    plain.load_state_dict(saved)
    run_steps(plain, resumed, 3, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(resumed, reference, strict=True))

    back = [torch.nn.Parameter(p.detach().clone()) for p in expected]
    adam_again = torch.optim.Adam(make_params(), lr=1e-2)
    run_steps(adam_again, adam_again.param_groups[0]["params"], 3, seed=2)
    offloaded = OffloadedAdam(back, lr=1e-2)
    offloaded.load_state_dict(weights_only_copy(adam_again.state_dict()))
    assert isinstance(offloaded.state[back[0]]["moments"], HostMoments)
    run_steps(offloaded, back, 3, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(back, reference, strict=True))


def test_make_optimizer_builds_it_by_name() -> None:
    params = make_params()
    optimizer = make_optimizer(params, "adam_offload", 1e-5, (0.9, 0.999), 0.0, fused=True)
    assert isinstance(optimizer, OffloadedAdam) and optimizer.param_groups[0]["lr"] == 1e-5
    with pytest.raises(ValueError, match="chunk_mib"):
        OffloadedAdam(params, chunk_mib=0)

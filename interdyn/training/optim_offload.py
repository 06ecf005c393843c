"""Adam with its moments in host memory: the paper's update rule, without 8 bytes of GPU memory per branch
parameter (the full-size figures are in docs/benchmarks.md).

The two moments of every parameter stay in (pinned) host memory between steps. A step walks the parameters
in chunks of ``chunk_mib``: a chunk's moments are copied to the GPU, updated there by PyTorch's own Adam
(``torch.optim.adam.adam``, the same arithmetic as ``torch.optim.Adam``), and copied back. The GPU holds
one chunk's moments at a time. The cost is the copies: 16 bytes per parameter per optimizer step over the
host link, whatever the number of accumulated micro-batches.

Checkpoints hold the moments as ``torch.optim.Adam`` does (``exp_avg``, ``exp_avg_sq``, ``step``), so one
optimizer's checkpoint resumes the other; loading puts the moments straight into host memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.optim.adam import adam as adam_update

MOMENTS = ("exp_avg", "exp_avg_sq")


class HostMoments:
    """A parameter's two Adam moments in host memory. Deliberately not a tensor, mapping or sequence (and
    without ``.to``): code that moves an optimizer's state to the GPU after loading a checkpoint, as
    Lightning's strategies do, leaves it where it is."""

    __slots__ = MOMENTS

    def __init__(self, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor) -> None:
        self.exp_avg, self.exp_avg_sq = exp_avg, exp_avg_sq

    @classmethod
    def like(cls, param: torch.Tensor, values: dict[str, torch.Tensor] | None = None) -> HostMoments:
        """Zero moments for ``param`` (or copies of ``values``), pinned when ``param`` is on a GPU so that the
        copies run asynchronously."""
        pin = param.device.type == "cuda"
        moments = []
        for name in MOMENTS:
            host = torch.zeros(param.shape, dtype=param.dtype, device="cpu", pin_memory=pin)
            if values is not None:
                host.copy_(values[name])
            moments.append(host)
        return cls(*moments)


class OffloadedAdam(torch.optim.Optimizer):
    """``torch.optim.Adam`` (L2 ``weight_decay`` as Adam's, no amsgrad) with the moments in host memory.

    Args:
        params: the parameters (or parameter groups).
        lr, betas, eps, weight_decay: Adam's.
        chunk_mib: parameter bytes per chunk of the step; the GPU holds twice that in moments at once.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        chunk_mib: float = 256.0,
    ) -> None:
        if chunk_mib <= 0:
            raise ValueError(f"chunk_mib must be positive, got {chunk_mib}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.chunk_bytes = int(chunk_mib * 2**20)

    def _chunks(self, params: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
        chunk: list[torch.Tensor] = []
        size = 0
        for p in params:
            if chunk and (
                size + p.numel() * p.element_size() > self.chunk_bytes or p.device != chunk[0].device
            ):
                yield chunk
                chunk, size = [], 0
            chunk.append(p)
            size += p.numel() * p.element_size()
        if chunk:
            yield chunk

    def _state_of(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["moments"] = HostMoments.like(p)
        return state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One Adam step of every parameter with a gradient, chunk by chunk through the GPU."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            for chunk in self._chunks(with_grad):
                self._update(group, chunk)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            # the copies back to host memory are asynchronous: complete before anyone reads the moments
            torch.cuda.synchronize()
        return loss

    def _update(self, group: dict[str, Any], chunk: list[torch.Tensor]) -> None:
        device = chunk[0].device
        states = [self._state_of(p) for p in chunk]
        exp_avgs = [s["moments"].exp_avg.to(device, non_blocking=True) for s in states]
        exp_avg_sqs = [s["moments"].exp_avg_sq.to(device, non_blocking=True) for s in states]
        beta1, beta2 = group["betas"]
        adam_update(
            chunk,
            [p.grad for p in chunk],
            exp_avgs,
            exp_avg_sqs,
            [],
            [s["step"] for s in states],
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )
        if device.type == "cpu":
            return  # the moments were updated where they live
        # back to host memory; the device copies are freed in stream order, so the next chunk reuses them
        for state, m, v in zip(states, exp_avgs, exp_avg_sqs, strict=True):
            state["moments"].exp_avg.copy_(m, non_blocking=True)
            state["moments"].exp_avg_sq.copy_(v, non_blocking=True)

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Adam``'s layout: ``exp_avg``, ``exp_avg_sq`` (host tensors) and ``step`` per parameter."""
        packed = super().state_dict()
        state = {}
        for index, entry in packed["state"].items():
            entry = dict(entry)
            moments = entry.pop("moments", None)
            if moments is not None:
                entry.update(exp_avg=moments.exp_avg, exp_avg_sq=moments.exp_avg_sq)
            state[index] = entry
        return {**packed, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load an ``OffloadedAdam`` or ``torch.optim.Adam`` state; the moments go to host memory directly."""
        moments: dict[Any, dict[str, torch.Tensor]] = {}
        stripped = {}
        for index, entry in state_dict["state"].items():
            entry = dict(entry)
            if all(name in entry for name in MOMENTS):
                moments[index] = {name: entry.pop(name) for name in MOMENTS}
            stripped[index] = entry
        super().load_state_dict({**state_dict, "state": stripped})
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for index, p in zip(saved_ids, params, strict=True):
            if index in moments:
                state = self.state[p]
                state["moments"] = HostMoments.like(p, moments[index])
                state.setdefault("step", torch.tensor(0.0))
                state["step"] = state["step"].detach().to("cpu", torch.float32)

"""Which part of a preparation pass this process runs, on which device, from the launcher it runs under.

A pass (the shards of a split, or the latent cache of a set of shards) is cut into fixed chunks; part
``i`` of ``n`` takes chunks ``i, i + n, i + 2n, ...`` (round robin, so that long and short videos spread
evenly). The part comes from, first match wins:

- ``--part i/n`` on the command line (any launcher);
- ``RANK`` / ``WORLD_SIZE`` (torchrun, or any launcher that sets them), with ``LOCAL_RANK`` for the device;
- ``SLURM_PROCID`` / ``SLURM_NTASKS`` (``srun`` with several tasks), with ``SLURM_LOCALID`` for the device;
- ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT`` (a job array; ``SLURM_ARRAY_TASK_MIN`` is the
  first id, so ``--array=1-32`` works too).

A job array whose tasks each run torchrun (or ``srun`` with several tasks) is split twice: array task
``a`` of ``A`` with rank ``r`` of ``R`` is part ``a * R + r`` of ``A * R``. Without any of these the pass
runs whole in one process (part ``0/1``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from interdyn.errors import InterDynError


class PartSpecError(InterDynError, ValueError):
    """``--part`` or the launcher's environment variables do not name a valid part."""


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count`` (0-based); ``local_rank`` picks the GPU on a node (None: not given)."""

    index: int = 0
    count: int = 1
    local_rank: int | None = None
    source: str = "single process"

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise PartSpecError(
                f"part {self.index}/{self.count} does not exist: parts are 0/n .. {self.count - 1}/n"
            )

    @property
    def whole(self) -> bool:
        """True when this one process runs the whole pass."""
        return self.count == 1

    def owns(self, chunk: int) -> bool:
        """Whether chunk number ``chunk`` of the pass belongs to this part."""
        return chunk % self.count == self.index

    def chunks(self, num_chunks: int) -> list[int]:
        """The chunk numbers of a pass of ``num_chunks`` that this part makes, in order."""
        return list(range(self.index, num_chunks, self.count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise PartSpecError(f"the environment variable {name}={value!r} is not a whole number") from None


def parse_part(spec: str) -> tuple[int, int]:
    """``"3/32"`` -> ``(3, 32)``; one clear error for anything else."""
    index, slash, count = spec.partition("/")
    try:
        if not slash:
            raise ValueError
        i, n = int(index), int(count)
    except ValueError:
        raise PartSpecError(
            f"--part takes INDEX/COUNT with a 0-based index, e.g. 3/32; got {spec!r}"
        ) from None
    Part(i, n)  # range check
    return i, n


def resolve_part(spec: str | None = None, env: Mapping[str, str] | None = None) -> Part:
    """The part this process runs: ``spec`` (``--part``) if given, else from the launcher's variables.

    See the module docstring for the order. ``env`` defaults to ``os.environ``.
    """
    env = os.environ if env is None else env
    rank, world, local = _int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK")
    source = "torchrun (RANK/WORLD_SIZE)"
    if rank is None or world is None:
        rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
        local = _int(env, "SLURM_LOCALID")
        source = "srun (SLURM_PROCID/SLURM_NTASKS)"
    if rank is None or world is None:
        rank, world, local, source = 0, 1, local, ""
    if spec:
        index, count = parse_part(spec)
        return Part(index, count, local, "--part")
    array_id, array_count = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
    if array_id is not None and array_count is not None:
        first = _int(env, "SLURM_ARRAY_TASK_MIN") or 0
        array_index = array_id - first
        if not 0 <= array_index < array_count:
            raise PartSpecError(
                f"SLURM array task {array_id} is outside {first}..{first + array_count - 1}"
                " (SLURM_ARRAY_TASK_MIN/COUNT); give the part with --part INDEX/COUNT"
            )
        where = "SLURM job array" + (f" x {source}" if source and world > 1 else "")
        return Part(array_index * world + rank, array_count * world, local, where)
    if not source:
        return Part(local_rank=local)
    return Part(rank, world, local, source)


def part_device(part: Part, requested: str | None) -> str | None:
    """The device for a model of this part: ``requested`` if given, else ``cuda:<local rank>`` when CUDA
    is there and the launcher named a local rank, else None (the caller's default)."""
    if requested:
        return requested
    if part.local_rank is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return f"cuda:{part.local_rank % max(1, torch.cuda.device_count())}"

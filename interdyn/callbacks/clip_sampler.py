"""What the test callbacks share: sampling a clip with a seed fixed by its key, the clip keys and
per-clip fields of a batch, gathering results from every rank and writing a report.

Every clip's samples are seeded with ``key_seed(seed, key)``, so that the videos are the same whatever
the batch size, rank or order; the results of all ranks are gathered with ``all_gather_object`` and
rank 0 writes the files atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch

from interdyn.data.sampling import key_seed
from interdyn.files import write_atomic
from interdyn.metrics.report import json_safe


class ClipSampler:
    """Sampling settings of a test callback: samples per clip, a seed per clip key and the pipeline
    overrides.

    Args:
        num_samples: samples per test clip (the paper's demo draws 3).
        seed: base seed; each clip's seed is derived from it and the clip key.
        num_inference_steps: sampling steps (default: the module's).
    """

    def __init__(self, num_samples: int = 1, seed: int = 42, num_inference_steps: int | None = None) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples, self.seed, self.num_inference_steps = num_samples, seed, num_inference_steps

    def sample(
        self, pl_module: L.LightningModule, pixels: torch.Tensor, control: torch.Tensor, key: str
    ) -> torch.Tensor:
        """``(N, T, 3, H, W)`` in [0, 1] for one clip (``pixels``/``control`` with a batch dim of 1)."""
        overrides: dict[str, Any] = {"num_videos_per_prompt": self.num_samples}
        if self.num_inference_steps is not None:
            overrides["num_inference_steps"] = self.num_inference_steps
        return pl_module.sample(pixels, control, seed=key_seed(self.seed, key), **overrides)[0]

    def protocol(self, pl_module: L.LightningModule, shape: tuple[int, ...] | None) -> dict[str, Any]:
        """The sampling part of a report's protocol, ``shape`` being a sample's ``(T, 3, H, W)``."""
        hp = pl_module.hparams
        return {
            "samples_per_input": self.num_samples,
            "frames": shape[0] if shape else None,
            "resolution": f"{shape[-2]}x{shape[-1]}" if shape else None,
            "seed": self.seed,
            "sampling_steps": self.num_inference_steps or hp.get("num_inference_steps"),
            "sampler": hp.get("scheduler", "euler"),
        }


def clip_keys(trainer: L.Trainer, batch: dict[str, Any], batch_idx: int) -> list[str]:
    """The batch's clip keys, or keys made from the rank and batch index when it has none."""
    n = len(batch["pixel_values"])
    return list(batch.get("key") or [f"rank{trainer.global_rank}-batch{batch_idx}-{i}" for i in range(n)])


def per_clip(batch: dict[str, Any], name: str, n: int) -> Any:
    """``batch[name]`` (a list or a tensor with one entry per clip), or ``n`` Nones when absent."""
    value = batch.get(name)
    return [None] * n if value is None else value


def clip_timing(batch: dict[str, Any], i: int) -> tuple[list[int] | None, list[float] | None]:
    """Clip ``i``'s ``source_indices`` and ``geometry`` as lists (None where the batch has no such key):
    what the physics error needs to map the simulation into the clip's frames."""
    indices = batch["source_indices"][i].tolist() if "source_indices" in batch else None
    geometry = batch["geometry"][i].tolist() if "geometry" in batch else None
    return indices, geometry


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank (just ``[obj]`` outside distributed runs)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


def run_folder(trainer: L.Trainer, out_dir: str | None) -> Path:
    """The output folder; call it on every rank (``trainer.log_dir`` broadcasts from rank 0)."""
    return Path(out_dir or trainer.log_dir or trainer.default_root_dir)


def write_report(folder: Path, stem: str, payload: dict[str, Any], markdown: str, title: str) -> None:
    """``<stem>.json`` (strict JSON) and ``<stem>.md`` written atomically into ``folder``, and the table
    printed."""
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{stem}.json", json.dumps(json_safe(payload), indent=2))
    write_atomic(folder / f"{stem}.md", markdown)
    print(f"\n{title} written to {folder / f'{stem}.md'}:\n\n{markdown}")

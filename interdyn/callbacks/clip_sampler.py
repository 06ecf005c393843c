"""What the test callbacks share: a base class that hands them each batch unpacked clip by clip, sampling a
clip with a seed fixed by its key, gathering results from every rank and writing a report.

Every clip's samples are seeded with ``key_seed(seed, key)``, so that the videos are the same whatever
the batch size, rank or order; the results of all ranks are gathered with ``all_gather_object`` and
rank 0 writes the files atomically. Because of that seeding, two callbacks that sample the same clip
with the same settings (the metrics and the counterfactual report of one ``interdyn test``) would draw
the same videos: the second one reuses the first one's, kept for the current batch only (:class:`SampleMemo`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from interdyn.contract import has_clips
from interdyn.data.sampling import key_seed
from interdyn.metrics.report import json_safe
from interdyn.utils.files import write_atomic


@dataclass
class _MemoEntry:
    pixels: torch.Tensor
    control: torch.Tensor
    settings: tuple[Any, ...]
    samples: torch.Tensor


class SampleMemo:
    """The samples drawn for the current batch, shared by the callbacks that read it.

    An entry is reused only for the same first frame, the same control (compared exactly, so a perturbed
    control is sampled anew) and the same seed, sample count and steps; the memo empties when a new
    batch (or a new step of the module) begins, so it holds one batch's samples at most.
    """

    def __init__(self) -> None:
        self.tag: tuple[Any, ...] | None = None
        self.entries: list[_MemoEntry] = []

    @staticmethod
    def of(pl_module: L.LightningModule) -> SampleMemo:
        """The memo attached to ``pl_module`` (made on first use)."""
        memo = getattr(pl_module, "_clip_sample_memo", None)
        if memo is None:
            memo = SampleMemo()
            pl_module._clip_sample_memo = memo
        return memo

    def begin(self, tag: tuple[Any, ...]) -> None:
        """Forget everything unless ``tag`` (stage, step, loader, batch) is the batch already held."""
        if tag != self.tag:
            self.tag, self.entries = tag, []

    def get(
        self, pixels: torch.Tensor, control: torch.Tensor, settings: tuple[Any, ...]
    ) -> torch.Tensor | None:
        for entry in self.entries:
            if (
                entry.settings == settings
                and entry.pixels.shape == pixels.shape
                and entry.control.shape == control.shape
                and torch.equal(entry.pixels, pixels)
                and torch.equal(entry.control, control)
            ):
                return entry.samples
        return None

    def put(
        self, pixels: torch.Tensor, control: torch.Tensor, settings: tuple[Any, ...], samples: torch.Tensor
    ) -> None:
        self.entries.append(_MemoEntry(pixels.detach().clone(), control.detach().clone(), settings, samples))


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
        """``(N, T, 3, H, W)`` in [0, 1] for one clip (``pixels``/``control`` with a batch dim of 1).

        The same clip sampled with the same settings earlier in this batch (by another callback) is not
        sampled again: its videos are returned (treat them as read-only)."""
        overrides: dict[str, Any] = {"num_videos_per_prompt": self.num_samples}
        if self.num_inference_steps is not None:
            overrides["num_inference_steps"] = self.num_inference_steps
        seed = key_seed(self.seed, key)
        settings = (seed, self.num_samples, self.num_inference_steps)
        first = pixels[:, 0] if pixels.ndim == 5 else pixels
        memo = SampleMemo.of(pl_module)
        samples = memo.get(first, control, settings)
        if samples is None:
            samples = pl_module.sample(pixels, control, seed=seed, **overrides)[0]
            memo.put(first, control, settings, samples)
        return samples

    def sample_batch(
        self, pl_module: L.LightningModule, pixels: torch.Tensor, control: torch.Tensor, keys: list[str]
    ) -> list[torch.Tensor]:
        """Each clip's ``(N, T, 3, H, W)`` in [0, 1], the clips sampled together in one batch (one guided
        forward per step for all of them) with each clip's own seed: the videos :meth:`sample` gives clip
        by clip (up to the kernels' rounding at another batch size). Clips already sampled in this batch by
        another callback are reused, the others are sampled together and remembered."""
        overrides: dict[str, Any] = {"num_videos_per_prompt": self.num_samples}
        if self.num_inference_steps is not None:
            overrides["num_inference_steps"] = self.num_inference_steps
        seeds = [key_seed(self.seed, key) for key in keys]
        first = pixels[:, 0] if pixels.ndim == 5 else pixels
        memo = SampleMemo.of(pl_module)
        settings = [(seed, self.num_samples, self.num_inference_steps) for seed in seeds]
        found = [memo.get(first[i : i + 1], control[i : i + 1], settings[i]) for i in range(len(keys))]
        todo = [i for i, samples in enumerate(found) if samples is None]
        if todo:
            index = torch.tensor(todo, device=pixels.device)
            drawn = pl_module.sample(
                pixels.index_select(0, index), control.index_select(0, index), seed=[seeds[i] for i in todo],
                **overrides,
            )  # fmt: skip
            for row, i in enumerate(todo):
                found[i] = drawn[row]
                memo.put(first[i : i + 1], control[i : i + 1], settings[i], drawn[row])
        return found

    def protocol(self, pl_module: L.LightningModule, shape: tuple[int, ...] | None) -> dict[str, Any]:
        """The sampling part of a report's protocol, ``shape`` being a sample's ``(T, 3, H, W)``: the module
        describes its own sampling (``sampling_protocol()``: steps, sampler, guidance, whatever the
        backbone), and this sampler's step count replaces the module's when it sets one."""
        describe = getattr(pl_module, "sampling_protocol", None)
        own = describe() if callable(describe) else {}
        return {
            "samples_per_input": self.num_samples,
            "frames": shape[0] if shape else None,
            "resolution": f"{shape[-2]}x{shape[-1]}" if shape else None,
            "seed": self.seed,
            "sampling_steps": self.num_inference_steps or own.get("sampling_steps"),
            "sampler": own.get("sampler"),
            "guidance": own.get("guidance"),
        }


@dataclass(frozen=True)
class BatchClips:
    """A batch as the callbacks read it, clip by clip.

    Args:
        batch: the collated batch (``pixel_values``, ``control``, optional per-clip fields).
        keys: its clip keys, made from the rank and batch index when it has none; empty for a batch holding
            only records of skipped samples, which has no frames or control.
        dataloader_idx: the loader the batch came from.
    """

    batch: dict[str, Any]
    keys: list[str]
    dataloader_idx: int = 0

    @classmethod
    def unpack(
        cls, trainer: L.Trainer, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> BatchClips:
        """The clips of ``batch`` (none when it holds only records of skipped samples)."""
        if not has_clips(batch):
            return cls(batch, [], dataloader_idx)
        n = len(batch["control"])
        keys = batch.get("key") or [f"rank{trainer.global_rank}-batch{batch_idx}-{i}" for i in range(n)]
        return cls(batch, list(keys), dataloader_idx)

    @property
    def pixels(self) -> torch.Tensor:
        """``(B, T, 3, H, W)`` frames in ``[-1, 1]``."""
        return self.batch["pixel_values"]

    @property
    def control(self) -> torch.Tensor:
        """``(B, T, C, H, W)`` control in ``[-1, 1]``."""
        return self.batch["control"]

    @property
    def skipped(self) -> list[str]:
        """The reasons of the batch's records of skipped samples."""
        return [record["reason"] for record in self.batch.get("skipped", [])]

    def clip(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip ``i``'s frames and control, each with a batch dim of 1."""
        return self.pixels[i : i + 1], self.control[i : i + 1]

    def field(self, name: str) -> Any:
        """``batch[name]`` (a list or a tensor with one entry per clip), or a None per clip when absent."""
        value = self.batch.get(name)
        return [None] * len(self.keys) if value is None else value

    def timing(self, i: int) -> tuple[list[int] | None, list[float] | None]:
        """Clip ``i``'s ``source_indices`` and ``geometry`` as lists (None where the batch has no such key):
        what the physics error needs to map the simulation into the clip's frames."""
        indices = self.batch["source_indices"][i].tolist() if "source_indices" in self.batch else None
        geometry = self.batch["geometry"][i].tolist() if "geometry" in self.batch else None
        return indices, geometry


class ClipCallback(L.Callback):
    """A callback that reads test and validation batches clip by clip: Lightning's batch-end hooks reach
    :meth:`on_test_clips` and :meth:`on_validation_clips` with each batch that holds clips, unpacked as
    :class:`BatchClips`, and :meth:`on_test_skipped` with the records of skipped samples of every test batch."""

    def on_test_skipped(self, trainer: L.Trainer, reasons: list[str]) -> None:
        """Called after every test batch with the reasons of its records of skipped samples (often none)."""

    def on_test_clips(self, trainer: L.Trainer, pl_module: L.LightningModule, clips: BatchClips) -> None:
        """Called after every test batch with clips."""

    def on_validation_clips(
        self, trainer: L.Trainer, pl_module: L.LightningModule, clips: BatchClips
    ) -> None:
        """Called after every validation batch with clips, those of the sanity check included."""

    def _on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        clips = BatchClips.unpack(trainer, batch, batch_idx, dataloader_idx)
        stage = "test" if trainer.testing else "validation"
        SampleMemo.of(pl_module).begin((stage, trainer.global_step, dataloader_idx, batch_idx, id(batch)))
        if trainer.testing:
            self.on_test_skipped(trainer, clips.skipped)
        if clips.keys:
            handler = self.on_test_clips if trainer.testing else self.on_validation_clips
            handler(trainer, pl_module, clips)

    on_test_batch_end = _on_batch_end
    on_validation_batch_end = _on_batch_end

    def _forget_samples(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a later run (other weights or settings, a recycled batch id) must never see this run's samples
        SampleMemo.of(pl_module).begin(("ended",))

    on_test_end = _forget_samples
    on_validation_end = _forget_samples


def gather_ranks(obj: Any) -> list[Any]:
    """``obj`` of every rank (just ``[obj]`` outside distributed runs)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


def run_folder(trainer: L.Trainer, out_dir: str | None) -> Path:
    """The output folder; call it on every rank (``trainer.log_dir`` broadcasts from rank 0)."""
    return Path(out_dir or trainer.log_dir or trainer.default_root_dir)


def write_report(
    trainer: L.Trainer,
    out_dir: str | None,
    stem: str,
    payload: dict[str, Any],
    markdown: str,
    title: str,
) -> None:
    """``<stem>.json`` (strict JSON) and ``<stem>.md`` written atomically into the run folder
    (:func:`run_folder`) by global rank 0, and the table printed. Call it on every rank."""
    folder = run_folder(trainer, out_dir)
    if not trainer.is_global_zero:
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{stem}.json", json.dumps(json_safe(payload), indent=2))
    write_atomic(folder / f"{stem}.md", markdown)
    print(f"\n{title} written to {folder / f'{stem}.md'}:\n\n{markdown}")

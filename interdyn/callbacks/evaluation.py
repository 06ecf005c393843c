"""Test-time evaluation: sample every test clip, score it, write the paper's table.

For each test batch the callback samples ``num_samples`` videos per clip, all clips of the batch together,
with seeds fixed per clip key (the same videos whatever the batch size, rank or order), scores them with
:class:`~interdyn.metrics.suite.VideoMetrics`, writes each rank's results to
``eval_parts/rank<r>.pt`` (so that a failed gather loses nothing), gathers the results of all ranks,
merges them in clip-key order (the same table whatever the number of ranks), and writes into the run
directory ``metrics.json`` (values, clips scored and skipped by reason, per-video rows, protocol),
``metrics.md`` (the paper's table layout with the protocol), mp4s of the first clips (input | control |
samples | ground truth) and, from rank 0, the same side-by-side videos to TensorBoard.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch

from interdyn.callbacks.clip_sampler import BatchClips, ClipCallback, ClipSampler, gather_ranks, run_folder
from interdyn.callbacks.video_logger import gif_bytes, log_gif, side_by_side
from interdyn.data.video import encode_video
from interdyn.errors import EvaluationError
from interdyn.metrics.suite import ALL_METRICS, VideoMetrics, markdown_table, merge_states, summarize
from interdyn.models.long import plan_windows
from interdyn.utils.files import write_atomic


def long_windows(pl_module: L.LightningModule, num_frames: int) -> list[tuple[int, int]] | None:
    """The frame spans of the windows a clip of ``num_frames`` is sampled in, when it is longer than the
    module's UNet window (``None`` otherwise, or for a module without a UNet, e.g. Wan's): the metrics score each
    window and the seams between them (docs/long.md)."""
    unet = getattr(pl_module, "unet", None)
    window = getattr(getattr(unet, "config", None), "num_frames", None)
    if window is None or num_frames <= window:
        return None
    plan = plan_windows(num_frames, window, pl_module.sampling.window_overlap)
    return [(w.start, w.stop) for w in plan]


class VideoEvaluation(ClipCallback):
    """Evaluate generated videos during ``interdyn test``.

    Args:
        metrics: which metrics run (``ssim, psnr, lpips, fvd, kvd, motion_fidelity, physics``).
        num_samples: samples per test clip (the paper's demo draws 3).
        seed: base seed; each clip's seed is derived from it and the clip key.
        num_inference_steps: sampling steps (default: the module's).
        i3d_weights, lpips_backbone, lpips_net, tracker, track_in_mask_box: see ``VideoMetrics``.
        save_videos: how many clips (per rank) get an mp4 (and, on rank 0, a TensorBoard video).
        out_dir: where the files go (default: the logger's run directory).
    """

    def __init__(
        self,
        metrics: list[str] | None = None,
        num_samples: int = 1,
        seed: int = 42,
        num_inference_steps: int | None = None,
        i3d_weights: str | None = None,
        lpips_backbone: str | None = None,
        lpips_net: str = "alex",
        tracker: str = "lk",
        track_in_mask_box: bool = True,
        save_videos: int = 4,
        out_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.sampler = ClipSampler(num_samples, seed, num_inference_steps)
        self.metrics = list(metrics) if metrics is not None else [m for m in ALL_METRICS if m != "lpips"]
        self.options = dict(
            i3d_weights=i3d_weights,
            lpips_backbone=lpips_backbone,
            lpips_net=lpips_net,
            tracker=tracker,
            track_in_mask_box=track_in_mask_box,
        )
        self.save_videos, self.out_dir = save_videos, out_dir
        self.evaluator: VideoMetrics | None = None
        self.results: dict[str, Any] | None = None
        self.skipped: Counter[str] = Counter()
        self._saved = 0

    def _folder(self, trainer: L.Trainer) -> Path:
        if getattr(self, "_run_dir", None) is None:  # set on every rank in on_test_start
            self._run_dir = run_folder(trainer, self.out_dir)
        self._run_dir.mkdir(parents=True, exist_ok=True)
        return self._run_dir

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # trainer.log_dir broadcasts from rank 0, so every rank resolves the folder here, together;
        # later calls (videos on some ranks, tables on rank 0) reuse it.
        self._run_dir = None
        self._folder(trainer)
        self.evaluator = VideoMetrics(self.metrics, device=pl_module.device, **self.options)
        self.skipped = Counter()
        self._saved = 0

    def on_test_skipped(self, trainer: L.Trainer, reasons: list[str]) -> None:
        self.skipped.update(reasons)

    def on_test_clips(self, trainer: L.Trainer, pl_module: L.LightningModule, clips: BatchClips) -> None:
        pixels, control = clips.pixels, clips.control
        metas = clips.field("meta")
        # the batch's clips sampled together, each with its key's seed (the same videos as one by one)
        batch_samples = self.sampler.sample_batch(pl_module, pixels, control, clips.keys)
        if self.evaluator.windows is None:
            self.evaluator.windows = long_windows(pl_module, pixels.shape[1])
        for i, key in enumerate(clips.keys):
            samples = batch_samples[i]
            source_indices, geometry = clips.timing(i)
            self.evaluator.update(
                (pixels[i] + 1) / 2,
                samples,
                key,
                masks=control[i, :, 0] > 0,
                meta=metas[i],
                source_indices=source_indices,
                geometry=geometry,
            )
            if self._saved < self.save_videos:
                self._save_video(trainer, key, *clips.clip(i), samples[None])
                self._saved += 1

    def _save_video(
        self, trainer: L.Trainer, key: str, pixels: torch.Tensor, control: torch.Tensor, samples: torch.Tensor
    ) -> None:
        frames = side_by_side(control, samples, pixels, with_input=True)
        folder = self._folder(trainer) / "videos"
        folder.mkdir(exist_ok=True)
        even = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]  # libx264 needs even sizes
        write_atomic(folder / f"{key}.mp4", encode_video(even, fps=7.0))
        log_gif(trainer, f"test/{key} (input|control|samples|truth)", gif_bytes(frames, 7.0), frames.shape)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        own = {**self.evaluator.state(), "skipped": dict(self.skipped)}
        parts = self._folder(trainer) / "eval_parts"  # this rank's results, before the gather can fail
        buffer = io.BytesIO()
        torch.save(own, buffer)
        write_atomic(parts / f"rank{trainer.global_rank}.pt", buffer.getvalue())
        everyone = gather_ranks(own)
        skipped = sum((Counter(s["skipped"]) for s in everyone), Counter())
        state = merge_states(everyone)
        scored = len({row["key"] for row in state["rows"]})
        clips = {
            "scored": scored,
            "skipped": sum(skipped.values()),
            "skipped_by_reason": dict(sorted(skipped.items())),
        }
        if scored == 0:  # every rank raises, after the gather, so none waits for the others
            why = (
                f"all {clips['skipped']} test samples were skipped ({_reasons(skipped)})"
                if skipped
                else "the test shards held no samples"
            )
            raise EvaluationError(
                f"no test clip was scored: {why}; check the test shards and the clip settings (num_frames, fps, "
                "size, driver visibility)"
            )
        states = [state]
        results = summarize(states, self.metrics)
        shape = state["shape"]
        protocol = {
            "videos": results["num_videos"],
            **self.sampler.protocol(pl_module, shape),  # the module's own sampling (SVD or Wan)
            "i3d_weights_sha256": self.evaluator.i3d_sha256,
            "tracker": self.options["tracker"] if "motion_fidelity" in self.metrics else None,
        }
        self.results = results
        for name, value in results.items():
            if isinstance(value, float):
                pl_module.log(f"test/{name}", value, rank_zero_only=True)
        if trainer.is_global_zero:
            folder = self._folder(trainer)
            payload = {"metrics": results, "clips": clips, "protocol": protocol, "per_video": state["rows"]}
            write_atomic(folder / "metrics.json", json.dumps(payload, indent=2, default=float))
            table = markdown_table(results, protocol) + (
                f"Clips: {scored} clips scored, {clips['skipped']} skipped"
                + (f" ({_reasons(skipped)})" if skipped else "")
                + ".\n"
            )
            write_atomic(folder / "metrics.md", table)
            print(f"\nEvaluation written to {folder / 'metrics.md'}:\n\n{table}")


def _reasons(skipped: Counter[str]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items()))

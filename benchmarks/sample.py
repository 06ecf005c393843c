"""Sampling benchmark: seconds for one guided video (image + masks -> 14 frames) with the pipeline.

    python benchmarks/sample.py --device cpu                    # tiny model, 64x64
    python benchmarks/sample.py --device cuda                   # full size (random weights), 256x384

Guidance is batched (one forward for both halves), frozen parts and branch in the chosen dtype, VAE
decoding in chunks. Reports the median of ``--repeats`` runs after one warm-up, for each number of
steps in ``--steps``, and the peak GPU memory. Results go to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, publish  # noqa: E402
from train_recipes import TINY_CONTROL  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line."""
    from interdyn.commands.spelling import ScriptParser  # old hyphenated options still work

    parser = ScriptParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--preset", default=None, choices=["tiny", "svd"], help="default: tiny on CPU, svd on CUDA"
    )
    parser.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default bf16 on CUDA"
    )
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 25])
    parser.add_argument("--schedulers", nargs="+", default=["euler", "dpmpp_2m"], help="samplers to time")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet and the branch")
    parser.add_argument(
        "--compile_backend", default="inductor", help="torch.compile backend (aot_eager: no codegen)"
    )
    parser.add_argument("--decode_chunk", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no_write", action="store_true")
    return parser


def make_pipeline(args: argparse.Namespace, preset: str, dtype: torch.dtype) -> Any:
    """The random ``preset`` model with a branch, as an InterDynPipeline on the device (compiled with
    ``--compile``)."""
    from interdyn.models import InterDynPipeline
    from interdyn.models.controlnet import ControlNetSDVModel
    from interdyn.models.svd import get_svd

    torch.manual_seed(0)
    extra = {"conditioning_embedding_out_channels": TINY_CONTROL} if preset == "tiny" else {}
    with torch.device(args.device):  # random initialisation of the full model on the CPU takes minutes
        svd = get_svd(f"random:{preset}")
        branch = ControlNetSDVModel.from_unet(svd.unet, **extra)
    pipe = InterDynPipeline.from_components(svd, branch).to(args.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    if args.compile:
        pipe.unet.compile(backend=args.compile_backend)
        pipe.controlnet.compile(backend=args.compile_backend)
    return pipe


def time_videos(pipe: Any, args: argparse.Namespace, h: int, w: int) -> list[tuple[str, int, float, float]]:
    """(sampler, steps, median seconds per video, peak GiB) for each sampler and number of steps."""
    cuda = args.device == "cuda"
    image = torch.rand(1, 3, h, w) * 2 - 1
    masks = torch.zeros(args.frames, h, w, dtype=torch.bool)
    masks[:, h // 4 : h // 2, w // 4 : w // 2] = True

    def run(steps: int, scheduler: str) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        pipe(
            image,
            masks,
            num_inference_steps=steps,
            scheduler=scheduler,
            generator=torch.Generator().manual_seed(0),
            decode_chunk_size=args.decode_chunk,
            output_type="pt",
        )
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    rows = []
    for scheduler in args.schedulers:
        for steps in args.steps:
            warmup = run(min(steps, 2), scheduler)  # warm-up (kernels, allocator, compilation)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            times = [run(steps, scheduler) for _ in range(args.repeats)]
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            rows.append((scheduler, steps, statistics.median(times), peak))
            print(json.dumps({"scheduler": scheduler, "steps": steps, "seconds": rows[-1][2], "peak_gib": peak,
                              "warmup_seconds": warmup, "compile": args.compile}), flush=True)  # fmt: skip
            print(
                f"{scheduler} {steps} steps: {rows[-1][2]:.2f} s (median of {args.repeats}), peak {peak:.1f} GiB",
                flush=True,
            )
    return rows


def main() -> int:
    """Time the sampling of one video and write the section."""
    args = build_parser().parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is visible", file=sys.stderr)
        return 2
    preset = args.preset or ("svd" if cuda else "tiny")
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    h, w = args.height or (256 if cuda else 64), args.width or (384 if cuda else 64)
    rows = time_videos(make_pipeline(args, preset, dtype), args, h, w)
    lines = [
        f"## Sampling on {args.device.upper()} (`benchmarks/sample.py --device {args.device}`), {time.strftime('%Y-%m-%d')}",
        "",
        f"- {machine(args.device)}",
        f"- {preset} model (random weights), one video of {args.frames} frames at {h}x{w}, {dtype}, guidance"
        f" 1 -> 3 batched with the conditional pass, VAE decode in chunks of {args.decode_chunk} frames;"
        f" median of {args.repeats} runs after a warm-up{'; UNet and branch compiled' if args.compile else ''}.",
        "",
        "| sampler | steps | seconds per video | peak GiB |",
        "|---|---|---|---|",
        *(
            f"| {k} | {s} | {t:.2f} | {p:.1f} |" if cuda else f"| {k} | {s} | {t:.2f} | - |"
            for k, s, t, p in rows
        ),
    ]
    publish("\n".join(lines), f"sample-{args.device}", not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())

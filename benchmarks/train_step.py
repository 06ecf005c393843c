"""Training-step benchmark: seconds per step and peak memory for each training recipe, plus an
analysis (parameter counts, FLOPs per step, activation memory) that needs no GPU.

    python benchmarks/train_step.py --device cpu                  # tiny model, every switch (CPU)
    python benchmarks/train_step.py --device cuda --preset svd    # full size, 256x384, 14 frames, batch 4
    python benchmarks/train_step.py --analyze                     # full size on fake CUDA tensors

Each recipe runs in its own process (clean peak memory). Results go to ``docs/benchmarks.md`` between
markers (``--no_write`` to only print). The full-size model has SVD's architecture with random
weights (``random:svd``): the numbers are those of the real model, the outputs are not.

Recipes (module switches; plain is the paper-like baseline):

- ``plain``: frozen parts fp16 (fp32 on CPU), no checkpointing, fp32 branch, no autocast.
- ``bf16``: frozen parts stored in bf16, bf16 autocast.
- ``bf16+ckpt``: and gradient checkpointing of the branch.
- ``bf16+ckpt+unet_ckpt``: and of the frozen UNet.
- ``recommended``: what ``configs/ssv2.yaml`` uses (see ``RECOMMENDED`` in ``train_recipes.py``).
- ``fused`` / ``compile``: single switches on top of plain (CPU table).
- ``cached`` / ``recommended+cache``: plain / recommended, with the conditioning read from a cache
  (``make latents``): no VAE encoder or CLIP in the step.
- ``24gb``: what ``configs/ssv2_24gb.yaml`` uses (``RECIPE_24GB``): recommended + cache, the
  encoders kept off the device, whole-layer checkpointing, Adam with its moments in host memory,
  micro-batches of 4 with gradient accumulation over 2 (the paper's 8 samples per optimizer step on one
  GPU).

``--analyze`` also writes the per-GPU memory of configs/ssv2.yaml and configs/ssv2_24gb.yaml (section
``config-memory``), by CUDA's autocast rules on fake tensors (``benchmarks/train_analysis.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import ROOT, machine, publish, write_section  # noqa: E402, F401 (write_section: re-exported)
from train_analysis import analysis_text, analyze, config_memory_text  # noqa: E402
from train_recipes import CONFIG_RECIPES, CPU_RECIPES, GPU_RECIPES, RECIPES, module_kwargs  # noqa: E402


# --------------------------------------------------------------------------- one recipe, timed
def make_inputs(
    module: Any, recipe: dict[str, Any], b: int, args: argparse.Namespace
) -> tuple[Any, Any, Any]:
    """Random frames and a mask video of batch ``b``; for cached recipes, the cache the DataModule hands
    over from ``make latents`` (float16), made here with the module's encoders."""
    device = torch.device(args.device)
    t, h, w = args.frames, args.height, args.width
    pixels = (torch.rand(b, t, 3, h, w, device=device) * 2 - 1).clamp(-1, 1)
    control = -torch.ones(b, t, 3, h, w, device=device)
    control[..., h // 4 : h // 2, w // 4 : w // 2] = 1.0
    if not recipe.get("cached"):
        return pixels, control, None
    from interdyn.models.conditioning import clip_image_embeds, encode_image_latents, encode_video_posterior

    vae, clip = module.vae, module.image_encoder
    on = next(vae.parameters()).device
    vae.to(device), clip.to(device)  # offloaded encoders: on the device for this pass only
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        mean, std = encode_video_posterior(vae, pixels)
        cache = {
            "latent_mean": mean.half(),
            "latent_std": std.half(),
            "image_latents": encode_image_latents(vae, pixels[:, 0], 0.02).half(),
            "image_embeds": clip_image_embeds(clip, pixels[:, 0]).half(),
        }
    vae.to(on), clip.to(on)
    return None, control, cache


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Time one recipe: ``--steps`` optimizer steps (each ``accumulate`` micro-batches) after ``--warmup``;
    on CUDA the peak memory, and with ``--budget_gib`` the largest micro-batch that fits in that budget."""
    from interdyn.training.module import InterDynModule

    recipe = RECIPES[args.one]
    if args.optimizer:
        recipe = {**recipe, "optimizer": args.optimizer}
    if args.fp32:
        recipe = {**recipe, "frozen_dtype": "float32", "autocast": None}
    device = torch.device(args.device)
    accumulate = recipe.get("accumulate", 1) if args.accumulate is None else args.accumulate
    torch.manual_seed(0)
    # Built on the device directly: random initialisation of the full model on the CPU takes minutes.
    with torch.device(device):
        module = InterDynModule(**module_kwargs(recipe, args.preset, args.device))
    module.to(device)
    module._encoders_on("cpu")  # offload_encoders: they start in host memory, as in training
    module.configure_model()
    module.train()
    optimizer = module.configure_optimizers()
    autocast = recipe.get("autocast")
    dtype = getattr(torch, autocast) if autocast else None

    def step(pixels: Any, control: Any, cache: Any) -> float:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(accumulate):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = module.compute_loss(pixels, control, drop_image=True, cache=cache) / accumulate
            loss.backward()
            total += float(loss.detach())
        optimizer.step()
        return total

    inputs = make_inputs(module, recipe, args.batch, args)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step(*inputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(*inputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / max(args.steps, 1)
    result: dict[str, Any] = {
        "recipe": args.one,
        "optimizer": recipe.get("optimizer", "adam"),
        "batch": args.batch,
        "accumulate": accumulate,
        "seconds_per_step": seconds,
        "samples_per_second": args.batch * accumulate / seconds,
    }
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    else:
        import resource

        result["peak_gib"] = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        )  # KiB -> GiB (process)
    print(json.dumps(result), flush=True)  # kept if the search below runs out of time
    del inputs
    if args.budget_gib:
        result["budget_gib"] = args.budget_gib
        result["largest_batch"] = largest_batch(module, recipe, args, lambda *x: step(*x))
    return result


def largest_batch(module: Any, recipe: dict[str, Any], args: argparse.Namespace, step: Any) -> int:
    """The largest micro-batch (up to ``--max_batch``) whose training step fits in ``--budget_gib``:
    on CUDA the allocator is capped at the budget, so a step beyond it runs out of memory; elsewhere
    (the dry run) only the code path runs."""
    import gc

    if args.device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.budget_gib * 2**30 / total))
    fits = 0
    for b in range(1, args.max_batch + 1):
        inputs = None
        try:
            inputs = make_inputs(module, recipe, b, args)
            step(*inputs)
            fits = b
        except torch.OutOfMemoryError:
            break
        finally:
            del inputs
            module.controlnet.zero_grad(set_to_none=True)
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
        print(json.dumps({"fits": b}), flush=True)
    return fits


# --------------------------------------------------------------------------- driver
def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line."""
    from interdyn.commands.spelling import ScriptParser  # old hyphenated options still work

    parser = ScriptParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--preset", default=None, choices=["tiny", "svd"], help="default: tiny on CPU, svd on CUDA"
    )
    parser.add_argument("--recipes", nargs="+", default=None, help=f"subset of {list(RECIPES)}")
    parser.add_argument("--batch", type=int, default=None, help="default 4 (CUDA) / 2 (CPU)")
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--height", type=int, default=None, help="default 256 (CUDA) / 64 (CPU)")
    parser.add_argument("--width", type=int, default=None, help="default 384 (CUDA) / 64 (CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10 CUDA / 5 CPU)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default 3 / 2; compile needs more)"
    )
    parser.add_argument(
        "--analyze", action="store_true", help="FLOPs and memory of the full model on fake CUDA tensors"
    )
    parser.add_argument("--no_write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument(
        "--accumulate", type=int, default=None, help="micro-batches per step (default: the recipe's)"
    )
    parser.add_argument(
        "--budget_gib", type=float, default=None, help="also find the largest batch within this"
    )
    parser.add_argument("--max_batch", type=int, default=12, help="upper end of that search")
    parser.add_argument("--optimizer", default=None, help="override the recipe's optimizer (e.g. adam)")
    parser.add_argument(
        "--fp32", action="store_true", help="float32 throughout (dry runs: CPUs run bf16 slowly)"
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    return parser


def fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The device's defaults for the sizes and step counts left unset (full size on CUDA and in the analysis)."""
    gpu = args.device == "cuda" or args.analyze
    args.preset = args.preset or ("svd" if gpu else "tiny")
    args.batch = args.batch or (4 if gpu else 2)
    args.height = args.height or (256 if gpu else 64)
    args.width = args.width or (384 if gpu else 64)
    args.steps = args.steps or (10 if args.device == "cuda" else 5)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.device == "cuda" else 2)
    return args


def run_recipes(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each recipe timed in its own process (a clean peak memory); a failed one is a row with its error."""
    results = []
    for name in args.recipes or (GPU_RECIPES if args.device == "cuda" else CPU_RECIPES):
        cmd = [sys.executable, __file__, "--one", name, "--device", args.device, "--preset", args.preset]
        for flag in ("batch", "frames", "height", "width", "steps", "warmup"):
            cmd += [f"--{flag}", str(getattr(args, flag))]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
            results.append({"recipe": name, "error": tail[0][:200]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    return results


def timing_text(results: list[dict[str, Any]], args: argparse.Namespace, today: str) -> str:
    """The timed recipes as a markdown section."""
    base = next((r for r in results if r["recipe"] == "plain" and "error" not in r), None)
    memory = (
        "peak GiB (torch.cuda.max_memory_allocated)"
        if args.device == "cuda"
        else "peak RSS GiB (whole process)"
    )
    settings = f"{args.preset} model, {args.frames} frames at {args.height}x{args.width}, batch {args.batch}"
    lines = [
        f"## Training step on {args.device.upper()} (`benchmarks/train_step.py --device {args.device}`), {today}",
        "",
        f"- {machine(args.device)}",
        f"- {settings}; {args.warmup} warm-up steps, mean of {args.steps} timed steps; optimizer step included.",
        "",
        f"| recipe | s/step | speed vs plain | {memory} |",
        "|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['recipe']} | failed: {r['error']} | | |")
            continue
        speed = f"{base['seconds_per_step'] / r['seconds_per_step']:.2f}x" if base else "-"
        lines.append(f"| {r['recipe']} | {r['seconds_per_step']:.3f} | {speed} | {r['peak_gib']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    """Time the recipes (or, with ``--analyze``, analyse them on fake tensors) and write the sections."""
    args = fill_defaults(build_parser().parse_args())
    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is visible", file=sys.stderr)
        return 2
    today = time.strftime("%Y-%m-%d")
    if args.analyze:
        rows = analyze(args)
        if any(r["recipe"] in CONFIG_RECIPES.values() for r in rows):
            publish(config_memory_text(rows, today), "config-memory", not args.no_write)
        publish(analysis_text(rows, args, today), "train-analysis", not args.no_write)
        return 0
    publish(timing_text(run_recipes(args), args, today), f"train-{args.device}", not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training-step benchmark: seconds per step and peak memory for each training recipe, plus an
analysis (parameter counts, FLOPs per step, activation memory) that needs no GPU.

    python benchmarks/train_step.py --device cpu                  # tiny model, every switch (CPU)
    python benchmarks/train_step.py --device cuda --preset svd    # full size, 256x384, 14 frames, batch 4
    python benchmarks/train_step.py --analyze                     # full size on the meta device

Each recipe runs in its own process (clean peak memory). Results go to ``docs/benchmarks.md`` between
markers (``--no-write`` to only print). The full-size model has SVD's architecture with random
weights (``random:svd``): the numbers are those of the real model, the outputs are not.

Recipes (module switches; the plain one is the paper-like baseline of issue 6):

- ``plain``: frozen parts fp16 (fp32 on CPU), no checkpointing, fp32 branch, no autocast.
- ``bf16``: frozen parts stored in bf16, bf16 autocast.
- ``bf16+ckpt``: and gradient checkpointing of the branch.
- ``bf16+ckpt+unet_ckpt``: and of the frozen UNet.
- ``recommended``: what ``configs/ssv2.yaml`` uses (see ``RECOMMENDED``).
- ``fused`` / ``compile``: single switches on top of plain (CPU table).
- ``cached`` / ``recommended+cache``: plain / recommended, with the conditioning read from a cache
  (``make latents``): no VAE encoder or CLIP in the step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"

RECOMMENDED = {  # configs/ssv2.yaml; the analysis puts it at ~39 GiB for batch 4 (target <= 40)
    "frozen_dtype": "bfloat16",
    "autocast": "bfloat16",
    "gradient_checkpointing": True,
    "unet_gradient_checkpointing": True,
}
RECIPES: dict[str, dict[str, Any]] = {
    "plain": {"frozen_dtype": "float16", "autocast": None},
    "bf16": {"frozen_dtype": "bfloat16", "autocast": "bfloat16"},
    "bf16+ckpt": {"frozen_dtype": "bfloat16", "autocast": "bfloat16", "gradient_checkpointing": True},
    "bf16+ckpt+unet_ckpt": {
        "frozen_dtype": "bfloat16",
        "autocast": "bfloat16",
        "gradient_checkpointing": True,
        "unet_gradient_checkpointing": True,
    },
    "recommended": RECOMMENDED,
    "fused": {"frozen_dtype": "float16", "autocast": None, "fused_optimizer": True},
    "compile": {"frozen_dtype": "float16", "autocast": None, "compile": True},
    "cached": {"frozen_dtype": "float16", "autocast": None, "cached": True},
    "recommended+cache": {**RECOMMENDED, "cached": True},
}
# compile is left out on CPU: inductor needs over ten minutes to compile the UNet on 2 cores
CPU_RECIPES = ["plain", "bf16", "bf16+ckpt", "bf16+ckpt+unet_ckpt", "fused", "cached"]
GPU_RECIPES = ["plain", "bf16", "bf16+ckpt", "bf16+ckpt+unet_ckpt", "recommended", "recommended+cache"]
TINY_CONTROL = [8, 16, 16, 32]


def module_kwargs(recipe: dict[str, Any], preset: str, device: str) -> dict[str, Any]:
    kw = {k: v for k, v in recipe.items() if k not in ("autocast", "cached")}
    if device == "cpu" and kw.get("frozen_dtype") == "float16":
        kw["frozen_dtype"] = "float32"  # CPU fp16 kernels are a poor baseline; fp32 is the CPU plain
    kw["svd"] = f"random:{preset}"
    if preset == "tiny":
        kw["conditioning_embedding_out_channels"] = TINY_CONTROL
    return kw


# --------------------------------------------------------------------------- one recipe, timed
def run_one(args: argparse.Namespace) -> dict[str, Any]:
    from interdyn.module import InterDynModule

    recipe = RECIPES[args.one]
    device = torch.device(args.device)
    torch.manual_seed(0)
    module = InterDynModule(**module_kwargs(recipe, args.preset, args.device)).to(device)
    module.configure_model()
    module.train()
    optimizer = module.configure_optimizers()
    b, t, h, w = args.batch, args.frames, args.height, args.width
    pixels = (torch.rand(b, t, 3, h, w, device=device) * 2 - 1).clamp(-1, 1)
    control = -torch.ones(b, t, 3, h, w, device=device)
    control[..., h // 4 : h // 2, w // 4 : w // 2] = 1.0
    autocast = recipe.get("autocast")
    dtype = getattr(torch, autocast) if autocast else None
    cache = None
    if recipe.get("cached"):  # what the DataModule hands over from `make latents` (float16 on disk)
        from interdyn.models.conditioning import (
            clip_image_embeds,
            encode_image_latents,
            encode_video_posterior,
        )

        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            mean, std = encode_video_posterior(module.vae, pixels)
            cache = {
                "latent_mean": mean.half(),
                "latent_std": std.half(),
                "image_latents": encode_image_latents(module.vae, pixels[:, 0], 0.02).half(),
                "image_embeds": clip_image_embeds(module.image_encoder, pixels[:, 0]).half(),
            }

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = module.compute_loss(pixels, control, drop_image=True, cache=cache)
        loss.backward()
        optimizer.step()
        return float(loss)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (whole process)
    return {"recipe": args.one, "seconds_per_step": seconds, "peak_gib": peak}


# --------------------------------------------------------------------------- analysis on meta
class SavedBytes:
    """A saved-tensor pack hook that adds up the bytes of each saved buffer once (a tensor saved by
    several ops, or views of one buffer, count once)."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[int] = set()
        self._alive: list[torch.Tensor] = []  # keeps the storage ids unique while counting

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        storage = x.untyped_storage()
        if storage._cdata not in self._seen:
            self._seen.add(storage._cdata)
            self.bytes += storage.nbytes()
        self._alive.append(x)
        return x


def analyze(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Parameters, FLOPs and activation memory of one training step, computed on the meta device
    (shapes only: nothing is allocated). bf16 autocast is modelled by running the branch in bf16."""
    from torch.utils.flop_counter import FlopCounterMode

    import interdyn.models.svd as svd_module
    from interdyn.module import InterDynModule

    scheduler_class = svd_module.EulerDiscreteScheduler

    def scheduler_on_cpu(**kw: Any) -> Any:  # the scheduler computes tables with .item()
        with torch.device("cpu"):
            return scheduler_class(**kw)

    svd_module.EulerDiscreteScheduler = scheduler_on_cpu
    rows = []
    b, t, h, w = args.batch, args.frames, args.height, args.width
    for name in GPU_RECIPES:
        recipe = RECIPES[name]
        with torch.device("meta"):
            module = InterDynModule(**module_kwargs(recipe, args.preset, "cuda"))
        module.to("meta")  # legacy torch.Tensor(...) parameters were made on the CPU
        if recipe.get("autocast"):
            module.controlnet.to(torch.bfloat16)
        module.train()
        counts = {
            n: sum(p.numel() for p in getattr(module, n).parameters())
            for n in ("unet", "vae", "image_encoder", "controlnet")
        }
        frozen_bytes = sum(
            p.numel() * p.element_size()
            for n in ("unet", "vae", "image_encoder")
            for p in getattr(module, n).parameters()
        )
        branch = counts["controlnet"]
        saved = SavedBytes()

        with torch.device("meta"):
            pixels = torch.zeros(b, t, 3, h, w)
            control = torch.zeros(b, t, 3, h, w)
            with FlopCounterMode(display=False) as flops:
                module.encode_conditions(pixels)
            encoders = flops.get_total_flops()
            with FlopCounterMode(display=False) as flops:
                with torch.autograd.graph.saved_tensors_hooks(saved, lambda x: x):
                    loss = module.compute_loss(pixels, control, sigma=torch.ones(b))
                    activations = saved.bytes  # held at the end of the forward pass: the peak
                forward = flops.get_total_flops()
                loss.backward()
                total = flops.get_total_flops()
        static = frozen_bytes + branch * 4 * 4  # fp32 weights, gradients and two Adam moments
        rows.append(
            {
                "recipe": name,
                "params_m": {k: v / 1e6 for k, v in counts.items()},
                "tflop_encoders": encoders / 1e12,
                "tflop_forward": forward / 1e12,
                "tflop_step": total / 1e12,
                "activations_gib": activations / 2**30,
                "static_gib": static / 2**30,
                "estimate_gib": (static + activations) / 2**30,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


# --------------------------------------------------------------------------- driver
def machine(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{os.cpu_count()} CPU cores, {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def write_section(name: str, text: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    docs = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in docs:
        docs = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, docs, flags=re.S)
    else:
        docs = docs.rstrip() + "\n\n" + block + "\n"
    tmp = DOCS.with_suffix(".tmp")
    tmp.write_text(docs)
    tmp.replace(DOCS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--analyze", action="store_true", help="FLOPs and memory of the full model on meta")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    gpu = args.device == "cuda" or args.analyze
    args.preset = args.preset or ("svd" if gpu else "tiny")
    args.batch = args.batch or (4 if gpu else 2)
    args.height = args.height or (256 if gpu else 64)
    args.width = args.width or (384 if gpu else 64)
    args.steps = args.steps or (10 if args.device == "cuda" else 5)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.device == "cuda" else 2)
    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is visible", file=sys.stderr)
        return 2
    today = time.strftime("%Y-%m-%d")
    settings = f"{args.preset} model, {args.frames} frames at {args.height}x{args.width}, batch {args.batch}"
    if args.analyze:
        rows = analyze(args)
        p = rows[0]["params_m"]
        lines = [
            f"## Training step, analysis on the meta device (`benchmarks/train_step.py --analyze`), {today}",
            "",
            f"- {settings}; nothing allocated: shapes only. Parameters (millions): UNet {p['unet']:.0f},"
            f" VAE {p['vae']:.0f}, CLIP image encoder {p['image_encoder']:.0f}, branch {p['controlnet']:.0f}.",
            "- TFLOP encoders: the VAE encoding of the clip and first frame plus CLIP, inside the forward;"
            " what cached conditioning (issue 6, part 2) would take out of every step.",
            "- Activations: bytes of the buffers saved for the backward pass at the end of the forward (each"
            " buffer once; the peak); bf16"
            " autocast modelled by running the branch in bf16. Static: frozen weights in their dtype +"
            " branch weights, gradients and Adam moments in fp32. Estimate = static + activations"
            " (without allocator overhead, workspaces and the VAE/CLIP forward).",
            "",
            "| recipe | TFLOP encoders | TFLOP forward | TFLOP step | activations GiB | static GiB | estimate GiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['recipe']} | {r['tflop_encoders']:.1f} | {r['tflop_forward']:.1f} | {r['tflop_step']:.1f} |"
                f" {r['activations_gib']:.1f} |"
                f" {r['static_gib']:.1f} | {r['estimate_gib']:.1f} |"
            )
        text = "\n".join(lines)
        print(text)
        if not args.no_write:
            write_section("train-analysis", text)
        return 0

    recipes = args.recipes or (GPU_RECIPES if args.device == "cuda" else CPU_RECIPES)
    results = []
    for name in recipes:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--device",
            args.device,
            "--preset",
            args.preset,
            "--batch",
            str(args.batch),
            "--frames",
            str(args.frames),
            "--height",
            str(args.height),
            "--width",
            str(args.width),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
            results.append({"recipe": name, "error": tail[0][:200]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    base = next((r for r in results if r["recipe"] == "plain" and "error" not in r), None)
    memory = (
        "peak GiB (torch.cuda.max_memory_allocated)"
        if args.device == "cuda"
        else "peak RSS GiB (whole process)"
    )
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
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(f"train-{args.device}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

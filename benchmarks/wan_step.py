"""Wan2.2 TI2V-5B on a GPU: seconds per training step and peak memory of a recipe of
``benchmarks/wan_recipes.py`` (per GPU), or seconds per sampled video. The Wan rows of ``make gpu-check``.

    python benchmarks/wan_step.py --device cuda --recipe 2x80gb       # full size, random weights
    python benchmarks/wan_step.py --device cuda --recipe 48gb --budget_gib 44.0
    python benchmarks/wan_step.py --device cuda --sample 50           # one 50-step video
    python benchmarks/wan_step.py --device cpu --tiny --recipe 48gb   # the same code on the tiny model

The model is ``random:wan2.2-ti2v-5b`` (``--tiny``: ``random:wan-tiny``, float32) with the default branch,
the clip configs/wan_ssv2.yaml's, 49 frames at 256x384 (``--tiny``: 5 at 64x64). A training step is the recipe's: ``accumulate``
micro-batches of ``batch`` clips, each the flow-matching loss under bf16 autocast with the frozen
transformer in bf16 and the branch in float32, then gradient clipping and Adam (its moments in host memory
for ``adam_offload``). A recipe of several GPUs is timed as one of its processes (DDP's per-GPU step; the
gradients' all-reduce is not in it). Prints one JSON line per result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wan_recipes import TINY_CLIP, WAN_CLIP, WAN_RECIPES, keep_fp32_cast  # noqa: E402


def build(args: argparse.Namespace) -> tuple[Any, Any]:
    """The random Wan components and the default branch on the device: the frozen transformer in bf16 as
    diffusers loads it (float32 on ``--tiny``), the VAE and the branch in float32."""
    from interdyn.models.wan import WanControlNetModel, get_wan

    torch.manual_seed(0)
    with torch.device(args.device):  # the full model's random initialisation on the CPU takes minutes
        wan = get_wan("random:wan-tiny" if args.tiny else "random:wan2.2-ti2v-5b")
        if not args.tiny:  # cast before the branch is built: a lower build peak (random weights either way)
            keep_fp32_cast(wan.transformer, torch.bfloat16)
        branch = WanControlNetModel.from_transformer(wan.transformer, vae=wan.vae)
    wan.transformer.requires_grad_(False)
    wan.vae.requires_grad_(False)
    return wan, branch


def clip_inputs(args: argparse.Namespace, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random frames in [-1, 1] and a driver mask (a moving box) of ``b`` clips."""
    t, h, w = args.frames, args.height, args.width
    video = torch.rand(b, t, 3, h, w, device=args.device) * 2 - 1
    control = -torch.ones(b, t, 3, h, w, device=args.device)
    for i in range(t):
        control[:, i, :, h // 4 : h // 2, w // 8 + i * w // (4 * t) : w // 2] = 1.0
    return video, control


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Time ``--steps`` optimizer steps of the recipe after ``--warmup`` of them."""
    from interdyn.models.wan.ti2v import encode_video_latents
    from interdyn.training.flow_objective import FlowMatchingObjective
    from interdyn.training.optim_offload import OffloadedAdam

    recipe = WAN_RECIPES[args.recipe]
    cuda = args.device == "cuda"
    if cuda and args.budget_gib:  # the recipe's card: a step beyond it runs out of memory
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.budget_gib * 2**30 / total))
    wan, branch = build(args)
    if recipe.get("checkpointing"):
        wan.transformer.enable_gradient_checkpointing()
        branch.enable_gradient_checkpointing()
    branch.train()
    params = list(branch.parameters())
    if recipe.get("optimizer") == "adam_offload":
        optimizer: torch.optim.Optimizer = OffloadedAdam(params, lr=1e-5)
    else:
        optimizer = torch.optim.Adam(params, lr=1e-5, fused=cuda)
    b, accumulate = recipe["batch"], args.accumulate or recipe.get("accumulate", 1)
    video, control = clip_inputs(args, b)
    prompt = torch.zeros(1, 512, wan.transformer.config.text_dim, device=args.device)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=not args.tiny)

    def encode() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), autocast:
            latents = encode_video_latents(wan.vae, video)
            return latents, latents[:, :, :1]  # the causal VAE encodes the first frame alone

    cached = encode() if recipe.get("cached") else None
    if cached is not None:
        wan.vae.to("cpu")  # cached latents: the VAE stays off the device while training
    objective = FlowMatchingObjective()
    if cuda:
        torch.cuda.reset_peak_memory_stats()  # the training step's peak, not the model's build

    def step() -> float:
        total = 0.0
        for _ in range(accumulate):
            latents, image_latents = cached or encode()
            with autocast:
                loss = objective.compute_loss(
                    wan.transformer, latents, image_latents, prompt, branch, control
                )
            (loss.loss / accumulate).backward()
            total += float(loss.loss.detach()) / accumulate
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    losses: list[float] = []
    seconds = timed(lambda: losses.append(step()), args)
    result = {"wan_recipe": args.recipe, "batch": b, "accumulate": accumulate, "seconds_per_step": seconds, "loss": losses[-1],
              "clips_per_second": b * accumulate / seconds, "clip": clip_of(args), "budget_gib": args.budget_gib}  # fmt: skip
    return {**result, **peaks(cuda)}


def timed(run: Any, args: argparse.Namespace) -> float:
    """Mean seconds of ``run()`` over ``--steps`` calls after ``--warmup`` (the peak counted from the start)."""
    cuda = args.device == "cuda"
    for _ in range(args.warmup):
        run()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        run()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / max(args.steps, 1)


def peaks(cuda: bool) -> dict[str, float]:
    """Peak allocated and reserved GiB on CUDA (the process's peak RSS elsewhere)."""
    if cuda:
        return {
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            "total_gib": torch.cuda.get_device_properties(0).total_memory / 2**30,
        }
    import resource

    return {"peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def sample(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds for one video (first frame + masks, ``--sample`` steps of the backbone's UniPC, VAE decode)
    with the branch, transformer and branch in bf16 (float32 on ``--tiny``), the VAE in float32."""
    from interdyn.models.wan import InterDynWanPipeline

    wan, branch = build(args)
    if not args.tiny:
        branch.to(torch.bfloat16)
    pipe = InterDynWanPipeline.from_components(wan, branch)
    pipe.set_progress_bar_config(disable=True)
    video, control = clip_inputs(args, 1)
    prompt = torch.zeros(1, 512, wan.transformer.config.text_dim, device=args.device)

    def run(steps: int) -> None:
        pipe(video[:, 0], prompt, control=control, num_inference_steps=steps, output_type="pt",
             generator=torch.Generator(args.device).manual_seed(0))  # fmt: skip

    start = time.perf_counter()
    run(2)  # warm-up: kernels and the allocator
    warmup = time.perf_counter() - start
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(lambda: run(args.sample), argparse.Namespace(device=args.device, warmup=0, steps=1))
    result = {"wan_sample": args.sample, "seconds": seconds, "warmup_seconds": warmup, "clip": clip_of(args)}
    return {**result, **peaks(args.device == "cuda")}


def clip_of(args: argparse.Namespace) -> str:
    return f"{args.frames}x{args.height}x{args.width}"


def main(argv: list[str] | None = None) -> int:
    """Run one recipe's timed steps, or one sampled video, and print the result as a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--recipe", choices=list(WAN_RECIPES), default=None)
    parser.add_argument("--sample", type=int, default=None, help="time one video of this many steps")
    parser.add_argument("--tiny", action="store_true", help="the tiny random Wan in float32 (dry run)")
    parser.add_argument("--steps", type=int, default=2, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--accumulate", type=int, default=None, help="micro-batches per step (the recipe's)")
    parser.add_argument("--budget_gib", type=float, default=None, help="cap the CUDA allocator at this")
    for key in ("frames", "height", "width"):
        parser.add_argument(f"--{key}", type=int, default=None)
    args = parser.parse_args(argv)
    if (args.recipe is None) == (args.sample is None):
        parser.error("give one of --recipe or --sample")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is visible", file=sys.stderr)
        return 2
    for key, value in (TINY_CLIP if args.tiny else WAN_CLIP).items():
        setattr(args, key, getattr(args, key) or value)
    try:
        result = train(args) if args.recipe else sample(args)
    except torch.OutOfMemoryError:
        result = {
            "wan_recipe": args.recipe,
            "out_of_memory": True,
            "budget_gib": args.budget_gib,
            **peaks(True),
        }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

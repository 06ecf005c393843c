"""Training-step benchmark: seconds per step and peak memory for each training recipe, plus an
analysis (parameter counts, FLOPs per step, activation memory) that needs no GPU.

    python benchmarks/train_step.py --device cpu                  # tiny model, every switch (CPU)
    python benchmarks/train_step.py --device cuda --preset svd    # full size, 256x384, 14 frames, batch 4
    python benchmarks/train_step.py --analyze                     # full size on the meta device

Each recipe runs in its own process (clean peak memory). Results go to ``docs/benchmarks.md`` between
markers (``--no_write`` to only print). The full-size model has SVD's architecture with random
weights (``random:svd``): the numbers are those of the real model, the outputs are not.

Recipes (module switches; plain is the paper-like baseline):

- ``plain``: frozen parts fp16 (fp32 on CPU), no checkpointing, fp32 branch, no autocast.
- ``bf16``: frozen parts stored in bf16, bf16 autocast.
- ``bf16+ckpt``: and gradient checkpointing of the branch.
- ``bf16+ckpt+unet_ckpt``: and of the frozen UNet.
- ``recommended``: what ``configs/ssv2.yaml`` uses (see ``RECOMMENDED``).
- ``fused`` / ``compile``: single switches on top of plain (CPU table).
- ``cached`` / ``recommended+cache``: plain / recommended, with the conditioning read from a cache
  (``make latents``): no VAE encoder or CLIP in the step.
- ``24gb``: what ``configs/ssv2_24gb.yaml`` uses (see ``RECIPE_24GB``): recommended + cache, the
  encoders kept off the device, whole-layer checkpointing, 8-bit AdamW, micro-batches of 2 with
  gradient accumulation over 4 (the paper's 8 samples per optimizer step on one GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"

RECOMMENDED = {  # configs/ssv2.yaml; the analysis puts it at ~44 GiB for batch 4, transients bounded
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
# configs/ssv2_24gb.yaml. `batch` is the micro-batch, `accumulate` the micro-batches per optimizer step.
RECIPE_24GB: dict[str, Any] = {
    **RECOMMENDED,
    "cached": True,
    "offload_encoders": True,
    "fine_checkpointing": True,
    "optimizer": "adamw8bit",
    "batch": 4,
    "accumulate": 2,
}
RECIPES["24gb"] = RECIPE_24GB
ANALYZED = ["plain", "bf16", "bf16+ckpt", "bf16+ckpt+unet_ckpt", "recommended", "recommended+cache", "24gb"]
NOT_MODULE_ARGS = ("autocast", "cached", "batch", "accumulate")
# Bytes of optimizer state per trainable parameter: Adam's two fp32 moments; bitsandbytes' blockwise
# 8-bit AdamW keeps two uint8 moments plus one fp32 scale per 256 values and moment (small tensors
# under 4096 values stay 32-bit: under 0.1 % of the branch).
STATE_BYTES = {"adam": 8.0, "adamw": 8.0, "adamw8bit": 2.0 + 2 * 4 / 256}
ALLOCATOR_SLACK = 0.10  # assumed: caching-allocator fragmentation on top of the allocated peak
# compile is left out on CPU: inductor needs over ten minutes to compile the UNet on 2 cores
CPU_RECIPES = ["plain", "bf16", "bf16+ckpt", "bf16+ckpt+unet_ckpt", "fused", "cached"]
GPU_RECIPES = ["plain", "bf16", "bf16+ckpt", "bf16+ckpt+unet_ckpt", "recommended", "recommended+cache"]
TINY_CONTROL = [8, 16, 16, 32]


def module_kwargs(recipe: dict[str, Any], preset: str, device: str) -> dict[str, Any]:
    kw = {k: v for k, v in recipe.items() if k not in NOT_MODULE_ARGS}
    if device == "cpu" and kw.get("frozen_dtype") == "float16":
        kw["frozen_dtype"] = "float32"  # CPU fp16 kernels are a poor baseline; fp32 is the CPU plain
    kw["svd"] = f"random:{preset}"
    if preset == "tiny":
        kw["conditioning_embedding_out_channels"] = TINY_CONTROL
    return kw


# --------------------------------------------------------------------------- one recipe, timed
def make_inputs(module: Any, recipe: dict[str, Any], b: int, args: argparse.Namespace) -> tuple[Any, Any, Any]:
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
    from interdyn.module import InterDynModule

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

        result["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process)
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


class LiveBytes(TorchDispatchMode):
    """Tracks the tensors that operators create: the largest one, and (``track_live``) the peak of the
    bytes alive at once, freed when the last Python reference to a storage goes. Only exact where no
    C++-side reference outlives the Python one, i.e. without autograd (the encoders under no_grad)."""

    def __init__(self, track_live: bool = False) -> None:
        super().__init__()
        self.track_live = track_live
        self.largest = 0
        self.now = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage -> [live tensor objects, bytes]

    def _release(self, key: int) -> None:
        entry = self._refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.now -= entry[1]
            del self._refs[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            self.largest = max(self.largest, storage.nbytes())
            if self.track_live:
                key = storage._cdata
                if key not in self._refs:
                    self._refs[key] = [0, storage.nbytes()]
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                self._refs[key][0] += 1
                weakref.finalize(t, self._release, key)
        return out


@contextlib.contextmanager
def gpu_attention() -> Iterator[None]:
    """Attention as a GPU computes it. On the meta device ``scaled_dot_product_attention`` takes the math
    path: it materialises the score matrix in float32 and saves it for the backward pass (2.5 GiB per
    layer at 256x384, batch 4), which no GPU kernel does. CUDA picks flash or memory-efficient
    attention, which save the output and a log-sum-exp only; the efficient kernel's meta implementation
    gives its exact shapes and FLOPs."""
    original = F.scaled_dot_product_attention

    def efficient(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any = None,
                  dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                  **kw: Any) -> torch.Tensor:  # fmt: skip
        if attn_mask is not None or dropout_p or is_causal or kw or q.device.type != "meta":
            return original(q, k, v, attn_mask, dropout_p, is_causal, scale=scale, **kw)
        grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, grad, 0.0, False, scale=scale)[0]

    F.scaled_dot_product_attention = efficient
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _meta_module(recipe: dict[str, Any], preset: str) -> Any:
    from interdyn.module import InterDynModule

    with torch.device("meta"):
        module = InterDynModule(**module_kwargs(recipe, preset, "cuda"))
    module.to("meta")  # legacy torch.Tensor(...) parameters were made on the CPU
    if recipe.get("autocast"):
        module.controlnet.to(torch.bfloat16)  # bf16 autocast, modelled by running the branch in bf16
    module.train()
    return module


def largest_segment(args: argparse.Namespace, batch: int) -> int:
    """Bytes one recomputed segment holds during the backward pass, bounded by the largest saved-buffer
    total of a single spatio-temporal resnet or transformer layer in an un-checkpointed bf16 step (a
    checkpointed segment is one of them or a part of one)."""
    from diffusers.models.resnet import SpatioTemporalResBlock
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    module = _meta_module(RECIPES["bf16"], args.preset)
    saved = SavedBytes()
    largest = 0
    starts: dict[int, int] = {}

    def before(mod: torch.nn.Module, *_: Any) -> None:
        starts[id(mod)] = saved.bytes

    def after(mod: torch.nn.Module, *_: Any) -> None:
        nonlocal largest
        largest = max(largest, saved.bytes - starts.pop(id(mod)))

    for mod in module.modules():
        if isinstance(mod, (SpatioTemporalResBlock, TransformerSpatioTemporalModel)):
            mod.register_forward_pre_hook(before)
            mod.register_forward_hook(after)
    b, t, h, w = batch, args.frames, args.height, args.width
    with torch.device("meta"), torch.autograd.graph.saved_tensors_hooks(saved, lambda x: x):
        pixels = torch.zeros(b, t, 3, h, w)
        module.compute_loss(pixels, torch.zeros(b, t, 3, h, w), sigma=torch.ones(b))
    return largest


def meta_cache(module: Any, b: int, t: int, h: int, w: int) -> dict[str, torch.Tensor]:
    """Cached conditioning as the DataModule hands it over (float16), shapes only."""
    f = 2 ** (len(module.vae.config.block_out_channels) - 1)
    c = module.vae.config.latent_channels
    d = module.image_encoder.config.projection_dim
    return {
        "latent_mean": torch.zeros(b, t, c, h // f, w // f, dtype=torch.float16),
        "latent_std": torch.ones(b, t, c, h // f, w // f, dtype=torch.float16),
        "image_latents": torch.zeros(b, c, h // f, w // f, dtype=torch.float16),
        "image_embeds": torch.zeros(b, 1, d, dtype=torch.float16),
    }


def analyze(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Parameters, FLOPs and memory of one training step, computed on the meta device (shapes only:
    nothing is allocated).

    Measured on meta: parameter and FLOP counts, the buffers saved for the backward pass (the
    activations, held at the end of the forward), the largest tensor of the step, the live-memory peak
    of the VAE/CLIP forward (no autograd: exact up to allocator rounding), the largest checkpointed
    segment. Bounded from those: the backward pass's working set (the segment it recomputes plus three
    tensors of the largest size: an activation's gradient, its input's gradient, one temporary), the
    optimizer step's temporaries (fused Adam and bitsandbytes update in place: at most one parameter's
    size). Assumed: allocator slack (``ALLOCATOR_SLACK``). The peak is static + the largest of
    (encoders' forward, activations + backward working set, optimizer step): they happen one after the
    other, each on top of the weights, gradients and optimizer state.
    """

    import interdyn.models.svd as svd_module

    scheduler_class = svd_module.EulerDiscreteScheduler

    def scheduler_on_cpu(**kw: Any) -> Any:  # the scheduler computes tables with .item()
        with torch.device("cpu"):
            return scheduler_class(**kw)

    svd_module.EulerDiscreteScheduler = scheduler_on_cpu
    with gpu_attention():
        return _analyze(args)


def _analyze(args: argparse.Namespace) -> list[dict[str, Any]]:
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    t, h, w = args.frames, args.height, args.width
    segment_at = {args.batch: largest_segment(args, args.batch)}
    for name in args.recipes or ANALYZED:
        recipe = RECIPES[name]
        b = recipe.get("batch", args.batch)
        accumulate = recipe.get("accumulate", 1)
        if b not in segment_at:
            segment_at[b] = largest_segment(args, b)
        module = _meta_module(recipe, args.preset)
        on_device = ["unet", "controlnet"] + ([] if recipe.get("offload_encoders") else ["vae", "image_encoder"])
        counts = {
            n: sum(p.numel() for p in getattr(module, n).parameters())
            for n in ("unet", "vae", "image_encoder", "controlnet")
        }
        frozen_bytes = sum(
            p.numel() * p.element_size()
            for n in on_device
            if n != "controlnet"
            for p in getattr(module, n).parameters()
        )
        branch = counts["controlnet"]
        largest_param = max(p.numel() for p in module.controlnet.parameters()) * 4
        optimizer = recipe.get("optimizer", "adam")
        saved = SavedBytes()

        with torch.device("meta"):
            control = torch.zeros(b, t, 3, h, w)
            cache = meta_cache(module, b, t, h, w) if recipe.get("cached") else None
            pixels = None if cache is not None else torch.zeros(b, t, 3, h, w)
            encoders, encoder_peak = 0, 0
            if cache is None:
                with FlopCounterMode(display=False) as flops, LiveBytes(track_live=True) as live:
                    module.encode_conditions(pixels)
                encoders, encoder_peak = flops.get_total_flops(), live.peak
            with FlopCounterMode(display=False) as flops, LiveBytes() as live:
                with torch.autograd.graph.saved_tensors_hooks(saved, lambda x: x):
                    loss = module.compute_loss(pixels, control, sigma=torch.ones(b), cache=cache)
                    activations = saved.bytes  # held at the end of the forward pass: the peak
                forward = flops.get_total_flops()
                loss.backward()
                total = flops.get_total_flops()
        checkpointed = recipe.get("gradient_checkpointing") or recipe.get("unet_gradient_checkpointing")
        backward = (segment_at[b] if checkpointed else 0) + 3 * live.largest
        static = frozen_bytes + branch * (4 + 4 + STATE_BYTES[optimizer])  # weights, gradients, state
        transient = max(encoder_peak, activations + backward, largest_param)
        estimate = static + transient
        rows.append(
            {
                "recipe": name,
                "batch": b,
                "accumulate": accumulate,
                "params_m": {k: v / 1e6 for k, v in counts.items()},
                "tflop_encoders": encoders / 1e12,
                "tflop_forward": forward / 1e12,
                "tflop_step": total / 1e12,
                "tflop_per_sample": total / 1e12 / b,
                "static_gib": static / 2**30,
                "activations_gib": activations / 2**30,
                "encoders_peak_gib": encoder_peak / 2**30,
                "backward_bound_gib": backward / 2**30,
                "optimizer_bound_gib": largest_param / 2**30,
                "estimate_gib": estimate / 2**30,
                "with_slack_gib": estimate * (1 + ALLOCATOR_SLACK) / 2**30,
                "switches": switches(recipe),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def switches(recipe: dict[str, Any]) -> str:
    """The recipe's settings in config terms."""
    parts = [f"frozen {recipe.get('frozen_dtype', 'float16')}"]
    if recipe.get("autocast"):
        parts.append(f"{recipe['autocast']} autocast")
    ckpt = [n for n, k in (("branch", "gradient_checkpointing"), ("UNet", "unet_gradient_checkpointing")) if recipe.get(k)]
    if ckpt:
        parts.append("checkpointing " + " + ".join(ckpt) + (" (whole layers)" if recipe.get("fine_checkpointing") else ""))
    if recipe.get("cached"):
        parts.append("cached conditioning" + (", encoders off the device" if recipe.get("offload_encoders") else ""))
    parts.append(recipe.get("optimizer", "adam"))
    if recipe.get("accumulate", 1) > 1:
        parts.append(f"accumulate {recipe['accumulate']}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- driver
def machine(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{os.cpu_count()} CPU cores, {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def write_section(name: str, text: str, docs_path: Path | None = None) -> None:
    """Replace (or append) the section between ``<!-- name:begin/end -->`` markers of the benchmarks page,
    written atomically (a reader or an interrupted run never sees a half-written page)."""
    from interdyn.files import write_atomic

    path = docs_path or DOCS
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    docs = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in docs:
        docs = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, docs, flags=re.S)
    else:
        docs = docs.rstrip() + "\n\n" + block + "\n"
    write_atomic(path, docs)


def analysis_text(rows: list[dict[str, Any]], args: argparse.Namespace, today: str) -> str:
    """The analysis as a markdown section."""
    p = rows[0]["params_m"]
    plain = next((r for r in rows if r["recipe"] == "plain"), rows[0])
    lines = [
        f"## Training step, analysis on the meta device (`benchmarks/train_step.py --analyze`), {today}",
        "",
        f"- {args.preset} model, {args.frames} frames at {args.height}x{args.width}; nothing allocated: shapes"
        f" only. Parameters (millions): UNet {p['unet']:.0f}, VAE {p['vae']:.0f}, CLIP image encoder"
        f" {p['image_encoder']:.0f}, branch {p['controlnet']:.0f}.",
        "- Measured on meta: TFLOP (torch's FLOP counter; the encoders' share is in the step unless cached),"
        " activations (buffers saved for the backward pass, each once, at the end of the forward), the VAE/CLIP"
        " forward's live peak, the step's largest tensor, the largest checkpointed segment.",
        "- Static: frozen weights on the device in their dtype (the VAE in float32: it encodes upcast), branch"
        " weights and gradients in fp32, optimizer state (Adam 8 bytes per parameter, 8-bit AdamW ~2).",
        "- Transient, bounded: the largest of the encoders' forward (measured), activations + the backward"
        " working set (the recomputed segment + 3x the largest tensor) and the optimizer step (fused Adam and"
        " 8-bit AdamW update in place: one parameter). Estimate = static + transient; + slack: with"
        f" {ALLOCATOR_SLACK:.0%} allocator fragmentation, assumed (the CUDA run measures it). The CUDA context"
        " (~0.5 GiB) is outside both.",
        "- Time vs plain: TFLOP per sample against plain's, i.e. at equal throughput per FLOP (small"
        " micro-batches run a GPU less efficiently; the CUDA rows measure it).",
        "",
        "| recipe | batch x accumulate | TFLOP step | TFLOP per sample | time vs plain | static GiB |"
        " activations GiB | transient bound GiB | estimate GiB | + slack GiB | switches |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        transient = max(
            r["encoders_peak_gib"], r["activations_gib"] + r["backward_bound_gib"], r["optimizer_bound_gib"]
        )
        lines.append(
            f"| {r['recipe']} | {r['batch']} x {r['accumulate']} | {r['tflop_step']:.1f} |"
            f" {r['tflop_per_sample']:.1f} | {r['tflop_per_sample'] / plain['tflop_per_sample']:.2f}x |"
            f" {r['static_gib']:.1f} | {r['activations_gib']:.1f} | {transient:.1f} |"
            f" {r['estimate_gib']:.1f} | {r['with_slack_gib']:.1f} | {r['switches']} |"
        )
    return "\n".join(lines)


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
    parser.add_argument("--no_write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--accumulate", type=int, default=None, help="micro-batches per step (default: the recipe's)")
    parser.add_argument("--budget_gib", type=float, default=None, help="also find the largest batch within this")
    parser.add_argument("--max_batch", type=int, default=12, help="upper end of that search")
    parser.add_argument("--optimizer", default=None, help="override the recipe's optimizer (e.g. adam)")
    parser.add_argument("--fp32", action="store_true", help="float32 throughout (dry runs: CPUs run bf16 slowly)")
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
        text = analysis_text(rows, args, today)
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

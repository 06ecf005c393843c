"""The training step's analysis on the meta device (``benchmarks/train_step.py --analyze``): parameter
counts, FLOPs and memory of each recipe at full size, computed from shapes only (nothing is allocated).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from train_recipes import (
    ALLOCATOR_SLACK,
    ANALYZED,
    OFFLOAD_CHUNK_BYTES,
    RECIPES,
    STATE_BYTES,
    module_kwargs,
    switches,
)


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
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, None, grad, 0.0, False, scale=scale
        )[0]

    F.scaled_dot_product_attention = efficient
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def meta_module(recipe: dict[str, Any], preset: str) -> Any:
    """The module of ``recipe`` on the meta device, in training mode (bf16 branch under autocast recipes)."""
    from interdyn.training.module import InterDynModule

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

    module = meta_module(RECIPES["bf16"], args.preset)
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
        module = meta_module(recipe, args.preset)
        on_device = ["unet", "controlnet"] + (
            [] if recipe.get("offload_encoders") else ["vae", "image_encoder"]
        )
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
        # the optimizer step's temporaries: one parameter (fused and 8-bit kernels update in place), and
        # for the offloaded Adam the moments of the chunk it updates on the device
        step_bytes = largest_param + (OFFLOAD_CHUNK_BYTES if optimizer == "adam_offload" else 0)
        transient = max(encoder_peak, activations + backward, step_bytes)
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
                "optimizer_bound_gib": step_bytes / 2**30,
                "estimate_gib": estimate / 2**30,
                "with_slack_gib": estimate * (1 + ALLOCATOR_SLACK) / 2**30,
                "switches": switches(recipe),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


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
        " weights and gradients in fp32, optimizer state on the device (Adam 8 bytes per parameter, 8-bit AdamW ~2, Adam offloaded to host memory 0).",
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

"""The training step's analysis (``benchmarks/train_step.py --analyze``): parameter counts, FLOPs and memory
of each recipe at full size, computed on fake tensors (shapes and dtypes only: nothing is allocated, no GPU
is needed).

Dtypes follow autocast's rules of the device the fake tensors are on. On CUDA, ``bf16-mixed`` autocast
runs convolutions, linear layers and attention in bf16 but GroupNorm, LayerNorm, softmax and a few more
in float32, and the ops after a norm (SiLU, residual adds) then run in float32 too; CPU autocast runs the
norms in their input's dtype, so every op of a bf16 model stays bf16. The memory figures use CUDA's
rules, on fake CUDA tensors (``rules="cuda"``); the CPU rules (``rules="cpu"``) give the bf16-everywhere
count for comparison and the backward pass, which torch's autograd engine cannot run on fake CUDA
tensors without a GPU (it asks the driver for the device's context).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from fake_cuda import (  # noqa: F401 (re-exported: the tests reach them through this module)
    GIB,
    RULES,
    LiveBytes,
    SavedBytes,
    WeightCopies,
    device_autocast,
    gpu_attention,
    simulated,
    static_storages,
    to_fake,
)
from torch._subclasses.fake_tensor import FakeTensorMode
from train_recipes import (
    ALLOCATOR_SLACK,
    ANALYZED,
    CARD_24GB_GIB,
    CONFIG_RECIPES,
    CUDA_CONTEXT_GIB,
    OFFLOAD_CHUNK_BYTES,
    RECIPES,
    STATE_BYTES,
    module_kwargs,
    switches,
)


def fake_module(recipe: dict[str, Any], preset: str, rules: str) -> tuple[Any, FakeTensorMode]:
    """The module of ``recipe`` on fake tensors of the device ``rules`` names, in training mode, and the
    fake mode to run it under. Built on the meta device first (no weights are initialised), then given
    empty fake storage: the full-size model costs nothing. The branch stays float32, as Lightning's
    ``bf16-mixed`` keeps it (autocast casts its weights per op)."""
    from interdyn.training.module import InterDynModule

    with torch.device("meta"):
        module = InterDynModule(**module_kwargs(recipe, preset, "cuda"))
    module.to("meta")  # legacy torch.Tensor(...) parameters were made on the CPU
    mode = to_fake(module, rules)
    # Lightning's device property (to_fake does not set it; "cuda" alone would ask the driver)
    module._device = torch.device(rules, 0) if rules == "cuda" else torch.device(rules)
    module.train()
    return module, mode


def fake_cache(module: Any, b: int, t: int, h: int, w: int) -> dict[str, torch.Tensor]:
    """Cached conditioning as the DataModule hands it over (float16), on the module's device."""
    f = 2 ** (len(module.vae.config.block_out_channels) - 1)
    c = module.vae.config.latent_channels
    d = module.image_encoder.config.projection_dim
    device = module.device
    return {
        "latent_mean": torch.zeros(b, t, c, h // f, w // f, dtype=torch.float16, device=device),
        "latent_std": torch.ones(b, t, c, h // f, w // f, dtype=torch.float16, device=device),
        "image_latents": torch.zeros(b, c, h // f, w // f, dtype=torch.float16, device=device),
        "image_embeds": torch.zeros(b, 1, d, dtype=torch.float16, device=device),
    }


@dataclass
class StepMemory:
    """One training step of a recipe under one device's autocast rules (bytes and FLOPs)."""

    activations: int = 0  # buffers saved for the backward pass, at the end of the forward
    by_dtype: dict[str, int] = field(default_factory=dict)  # the activations by dtype
    weight_copies: int = 0  # autocast's cached low-precision branch weights, beyond those saved
    largest: int = 0  # the largest tensor of the forward (and of the backward, when it ran)
    encoder_peak: int = 0  # the live peak of the VAE/CLIP forward (in-step conditioning only)
    flops_encoders: int = 0
    flops_forward: int = 0
    flops_step: int = 0  # forward + backward (0 when the backward did not run)


def measure_step(
    recipe: dict[str, Any],
    preset: str,
    rules: str,
    b: int,
    t: int,
    h: int,
    w: int,
    backward: bool = True,
    count_flops: bool = True,
) -> StepMemory:
    """Run one training step of ``recipe`` on fake tensors under ``rules`` (``"cuda"``: CUDA's autocast,
    forward only; ``"cpu"``: CPU's, forward and backward) and measure what it holds and (``count_flops``,
    which doubles the time) computes. Call it inside :func:`simulated`."""
    from torch.utils.flop_counter import FlopCounterMode

    if rules == "cuda" and backward:
        raise ValueError("the autograd engine cannot run a backward pass on fake CUDA tensors without a GPU")
    module, mode = fake_module(recipe, preset, rules)

    def counter() -> Any:
        return FlopCounterMode(display=False) if count_flops else NoFlops()

    dtype = getattr(torch, recipe["autocast"]) if recipe.get("autocast") else None
    trainable = {p.untyped_storage()._cdata for p in module.parameters() if p.requires_grad}
    result = StepMemory()
    saved = SavedBytes(exclude=static_storages(module))
    with mode, device_autocast(rules, dtype):  # Lightning's autocast wraps the whole training step
        control = torch.zeros(b, t, 3, h, w, device=rules)
        cache = fake_cache(module, b, t, h, w) if recipe.get("cached") else None
        pixels = None if cache is not None else torch.zeros(b, t, 3, h, w, device=rules)
        if cache is None:
            with counter() as flops, LiveBytes(track_live=True) as live:
                module.encode_conditions(pixels)
            result.flops_encoders, result.encoder_peak = flops.get_total_flops(), live.peak
        copies = WeightCopies(trainable, dtype) if dtype is not None else contextlib.nullcontext()
        with counter() as flops, LiveBytes() as live, copies:
            with torch.autograd.graph.saved_tensors_hooks(saved, lambda x: x):
                loss = module.compute_loss(pixels, control, sigma=torch.ones(b, device=rules), cache=cache)
            result.flops_forward = flops.get_total_flops()
            result.activations, result.by_dtype = saved.bytes, dict(saved.by_dtype)
            if dtype is not None:
                result.weight_copies = copies.bytes_beyond(saved.seen)
    if backward:
        with mode, counter() as flops, live:
            loss.backward()
        result.flops_step = result.flops_forward + flops.get_total_flops()
    result.largest = live.largest
    return result


class NoFlops:
    """Stands in for torch's FLOP counter where FLOPs are not needed."""

    def __enter__(self) -> NoFlops:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def get_total_flops(self) -> int:
        return 0


def largest_segment(args: argparse.Namespace, batch: int) -> int:
    """Bytes one recomputed segment holds during the backward pass, bounded by the largest saved-buffer
    total of a single spatio-temporal resnet or transformer layer in an un-checkpointed bf16-autocast step
    under CUDA's rules (a checkpointed segment is one of them or a part of one)."""
    from diffusers.models.resnet import SpatioTemporalResBlock
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    module, mode = fake_module(RECIPES["bf16"], args.preset, "cuda")
    saved = SavedBytes(exclude=static_storages(module))
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
    with mode, device_autocast("cuda", torch.bfloat16):
        with torch.autograd.graph.saved_tensors_hooks(saved, lambda x: x):
            pixels = torch.zeros(b, t, 3, h, w, device="cuda")
            module.compute_loss(pixels, torch.zeros_like(pixels), sigma=torch.ones(b, device="cuda"))
    return largest


def analyze(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Parameters, FLOPs and memory of one training step of each recipe, on fake tensors (shapes and
    dtypes only: nothing is allocated).

    Measured under CUDA's autocast rules (fake CUDA tensors, forward): the buffers saved for the backward
    pass (the activations, held at the end of the forward; parameters are static memory and not counted
    again), autocast's cached bf16 copies of the branch's fp32 weights, the largest tensor, the live peak
    of the VAE/CLIP forward (no autograd: exact up to allocator rounding), the largest checkpointed
    segment. Measured under CPU rules (fake CPU tensors, every op bf16; forward and backward): FLOPs, the
    activations for comparison, the backward's largest tensor (each gradient has its tensor's shape and
    dtype, so the largest of both passes bounds the CUDA backward's). Bounded from those: the backward
    pass's working set (the segment it recomputes plus three tensors of the largest size: an
    activation's gradient, its input's gradient, one temporary), the optimizer step's temporaries (fused
    Adam and bitsandbytes update in place: at most one parameter's size; offloaded Adam: a chunk of
    moments). Assumed: allocator slack (``ALLOCATOR_SLACK``). The peak is static + the largest of (the
    encoders' forward, the end of the forward (activations + weight copies), activations + the backward
    working set, the optimizer step): they happen one after the other on top of the weights, gradients
    and optimizer state.
    """
    with simulated():
        return _analyze(args)


def _analyze(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    t, h, w = args.frames, args.height, args.width
    segment_at: dict[int, int] = {}
    for name in args.recipes or ANALYZED:
        recipe = RECIPES[name]
        b = recipe.get("batch", args.batch)
        accumulate = recipe.get("accumulate", 1)
        checkpointed = recipe.get("gradient_checkpointing") or recipe.get("unet_gradient_checkpointing")
        if checkpointed and b not in segment_at:
            segment_at[b] = largest_segment(args, b)
        cuda = measure_step(recipe, args.preset, "cuda", b, t, h, w, backward=False, count_flops=False)
        cpu = measure_step(recipe, args.preset, "cpu", b, t, h, w, backward=True)
        rows.append(memory_row(name, recipe, args.preset, b, accumulate, cuda, cpu, segment_at.get(b, 0)))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def memory_row(
    name: str,
    recipe: dict[str, Any],
    preset: str,
    b: int,
    accumulate: int,
    cuda: StepMemory,
    cpu: StepMemory,
    segment: int,
) -> dict[str, Any]:
    """One recipe's row: its static memory (from the module's parameters), the transients measured under
    CUDA's rules and the bounds built from them."""
    from interdyn.training.module import InterDynModule

    with torch.device("meta"):
        module = InterDynModule(**module_kwargs(recipe, preset, "cuda"))
    on_device = ["unet"] + ([] if recipe.get("offload_encoders") else ["vae", "image_encoder"])
    counts = {
        n: sum(p.numel() for p in getattr(module, n).parameters())
        for n in ("unet", "vae", "image_encoder", "controlnet")
    }
    frozen = sum(p.numel() * p.element_size() for n in on_device for p in getattr(module, n).parameters())
    branch = counts["controlnet"]
    optimizer = recipe.get("optimizer", "adam")
    largest = max(cuda.largest, cpu.largest)
    backward = segment + 3 * largest
    # the optimizer step's temporaries: one parameter (fused and 8-bit kernels update in place), and
    # for the offloaded Adam the moments of the chunk it updates on the device
    largest_param = max(p.numel() for p in module.controlnet.parameters()) * 4
    step_bytes = largest_param + (OFFLOAD_CHUNK_BYTES if optimizer == "adam_offload" else 0)
    parts = {
        "frozen": frozen,  # frozen weights on the device, in their dtype
        "branch": branch * 4,  # the branch's fp32 weights (bf16-mixed keeps them fp32)
        "gradients": branch * 4,  # fp32; under DDP with gradient_as_bucket_view the all-reduce buckets
        "optimizer_state": int(branch * STATE_BYTES[optimizer]),
    }
    static = sum(parts.values())
    forward_end = cuda.activations + cuda.weight_copies
    transient = max(cuda.encoder_peak, forward_end, cuda.activations + backward, step_bytes)
    estimate = static + transient
    with_slack = estimate * (1 + ALLOCATOR_SLACK)
    return {
        "recipe": name,
        "batch": b,
        "accumulate": accumulate,
        "params_m": {k: v / 1e6 for k, v in counts.items()},
        "tflop_encoders": cpu.flops_encoders / 1e12,
        "tflop_forward": cpu.flops_forward / 1e12,
        "tflop_step": cpu.flops_step / 1e12,
        "tflop_per_sample": cpu.flops_step / 1e12 / b,
        **{f"{k}_gib": v / GIB for k, v in parts.items()},
        "static_gib": static / GIB,
        "activations_gib": cuda.activations / GIB,
        "activations_fp32_gib": cuda.by_dtype.get("float32", 0) / GIB,
        "activations_cpu_rules_gib": cpu.activations / GIB,
        "weight_copies_gib": cuda.weight_copies / GIB,
        "encoders_peak_gib": cuda.encoder_peak / GIB,
        "backward_bound_gib": backward / GIB,
        "optimizer_bound_gib": step_bytes / GIB,
        "transient_gib": transient / GIB,
        "estimate_gib": estimate / GIB,
        "with_slack_gib": with_slack / GIB,
        "with_context_gib": with_slack / GIB + CUDA_CONTEXT_GIB,
        "switches": switches(recipe),
    }


def fits_24gb(row: dict[str, Any]) -> bool:
    """Whether a row's estimate, with the allocator slack and the CUDA context, fits what a 24 GB card
    (RTX 3090 / 4090, A5000) offers."""
    return row["with_context_gib"] <= CARD_24GB_GIB


def analysis_text(rows: list[dict[str, Any]], args: argparse.Namespace, today: str) -> str:
    """The analysis as a markdown section."""
    p = rows[0]["params_m"]
    plain = next((r for r in rows if r["recipe"] == "plain"), rows[0])
    lines = [
        f"## Training step, analysis on fake CUDA tensors (`benchmarks/train_step.py --analyze`), {today}",
        "",
        f"- {args.preset} model, {args.frames} frames at {args.height}x{args.width}; analysis on fake CUDA"
        " tensors, not a GPU measurement: shapes and dtypes only, nothing allocated. Parameters (millions):"
        f" UNet {p['unet']:.0f}, VAE {p['vae']:.0f}, CLIP image encoder {p['image_encoder']:.0f}, branch"
        f" {p['controlnet']:.0f}.",
        "- Dtypes follow CUDA's autocast rules (GroupNorm, LayerNorm, softmax in float32, and what follows a"
        " norm in float32 until the next convolution or linear layer); `activations, CPU rules` is the same"
        " step with every op in bf16 (CPU autocast), for comparison. TFLOP: torch's FLOP counter (the"
        " encoders' share is in the step unless cached).",
        "- Measured: activations (buffers saved for the backward pass, each once, at the end of the forward;"
        " parameters not counted again), bf16 weight copies (autocast's cache of the fp32 branch weights,"
        " held for the forward), the VAE/CLIP forward's live peak, the step's largest tensor, the largest"
        " checkpointed segment.",
        "- Static: frozen weights on the device in their dtype (the VAE in float32: it encodes upcast), branch"
        " weights and gradients in fp32 (under DDP with `gradient_as_bucket_view` the gradients are the"
        " all-reduce buckets: no second copy), optimizer state on the device (Adam 8 bytes per parameter,"
        " 8-bit AdamW ~2, Adam offloaded to host memory 0).",
        "- Transient, bounded: the largest of the encoders' forward, the end of the forward (activations +"
        " weight copies), activations + the backward working set (the recomputed segment + 3x the largest"
        " tensor) and the optimizer step (one parameter; offloaded Adam: a 512 MiB chunk of moments)."
        f" Estimate = static + transient; + slack: with {ALLOCATOR_SLACK:.0%} allocator fragmentation,"
        f" assumed. The CUDA context (~{CUDA_CONTEXT_GIB} GiB) is outside both.",
        "- Time vs plain: TFLOP per sample against plain's, i.e. at equal throughput per FLOP (small"
        " micro-batches run a GPU less efficiently; the CUDA rows measure it).",
        "",
        "| recipe | batch x accumulate | TFLOP step | TFLOP per sample | time vs plain | static GiB |"
        " activations GiB, CPU rules | activations GiB | of which fp32 | weight copies GiB |"
        " transient bound GiB | estimate GiB | + slack GiB | switches |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['batch']} x {r['accumulate']} | {r['tflop_step']:.1f} |"
            f" {r['tflop_per_sample']:.1f} | {r['tflop_per_sample'] / plain['tflop_per_sample']:.2f}x |"
            f" {r['static_gib']:.1f} | {r['activations_cpu_rules_gib']:.1f} | {r['activations_gib']:.1f} |"
            f" {r['activations_fp32_gib']:.1f} | {r['weight_copies_gib']:.1f} | {r['transient_gib']:.1f} |"
            f" {r['estimate_gib']:.1f} | {r['with_slack_gib']:.1f} | {r['switches']} |"
        )
    return "\n".join(lines)


CONFIG_COLUMNS = [  # (heading, row key) of the per-config table
    ("frozen weights", "frozen_gib"),
    ("branch weights (fp32)", "branch_gib"),
    ("gradients (fp32)", "gradients_gib"),
    ("Adam state on the GPU", "optimizer_state_gib"),
    ("bf16 weight copies", "weight_copies_gib"),
    ("activations", "activations_gib"),
    ("backward working set", "backward_bound_gib"),
    ("allocated peak", "estimate_gib"),
    ("+ slack", "with_slack_gib"),
    ("+ CUDA context", "with_context_gib"),
]


def config_memory_text(rows: list[dict[str, Any]], today: str) -> str:
    """Per-GPU memory of the shipped GPU configs (the rows of :data:`CONFIG_RECIPES`) as a markdown section."""
    by_recipe = {r["recipe"]: r for r in rows}
    lines = [
        "## Memory per GPU of the shipped configs",
        "",
        f"{today}. Analysis on fake CUDA tensors, not a GPU measurement (`benchmarks/train_step.py --analyze`; how it"
        " counts: the training-step analysis below). Full-size model, 14 frames at 256x384, the config's"
        " micro-batch, CUDA's autocast rules. GiB (2^30 bytes); the allocated peak is the static parts +"
        " the largest transient (the end of the forward, the backward, the encoders or the optimizer"
        f" step); + slack: {ALLOCATOR_SLACK:.0%} allocator fragmentation, assumed; + CUDA context:"
        f" {CUDA_CONTEXT_GIB} GiB, assumed. A 24 GB card (RTX 3090 / 4090, A5000) offers"
        f" {CARD_24GB_GIB} GiB.",
        "",
        "| config | recipe | micro-batch x accumulate | "
        + " | ".join(h for h, _ in CONFIG_COLUMNS)
        + " | fits 24 GB |",
        "|---|---|---|" + "---|" * len(CONFIG_COLUMNS) + "---|",
    ]
    for config, recipe in CONFIG_RECIPES.items():
        if recipe not in by_recipe:
            continue
        r = by_recipe[recipe]
        values = " | ".join(f"{r[k]:.1f}" for _, k in CONFIG_COLUMNS)
        lines.append(
            f"| `{config}` | {recipe} | {r['batch']} x {r['accumulate']} | {values} |"
            f" {'yes' if fits_24gb(r) else 'no'} |"
        )
    return "\n".join(lines)

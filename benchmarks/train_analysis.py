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
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
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

GIB = 2**30
RULES = ("cuda", "cpu")  # the device whose autocast rules the fake tensors follow


class SavedBytes:
    """A saved-tensor pack hook that adds up the bytes of each saved buffer once (a tensor saved by
    several ops, or views of one buffer, count once), by dtype. Buffers in ``exclude`` (the storages of
    the module's parameters and buffers: static memory, counted as such) are left out."""

    def __init__(self, exclude: set[int] | None = None) -> None:
        self.bytes = 0
        self.by_dtype: dict[str, int] = {}
        self.seen: set[int] = set(exclude or ())
        self._alive: list[torch.Tensor] = []  # keeps the storage ids unique while counting

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        storage = x.untyped_storage()
        if storage._cdata not in self.seen:
            self.seen.add(storage._cdata)
            self.bytes += storage.nbytes()
            dtype = str(x.dtype).removeprefix("torch.")
            self.by_dtype[dtype] = self.by_dtype.get(dtype, 0) + storage.nbytes()
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


class WeightCopies(TorchDispatchMode):
    """The copies in the autocast dtype that autocast makes of trainable weights. Autocast caches the cast
    of a leaf tensor that requires grad (the fp32 branch weights under ``bf16-mixed``) until the outermost
    autocast region ends, i.e. for the whole forward pass, whether or not a checkpointed op saves it. Use
    it inside autocast only (inside an autocast kernel ``torch.is_autocast_enabled`` reads False, so the
    mode cannot tell itself)."""

    def __init__(self, trainable: set[int], dtype: torch.dtype) -> None:
        super().__init__()
        self.trainable, self.dtype = trainable, dtype
        self.copies: dict[int, list[torch.Tensor]] = {}  # weight's storage -> its copies

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        source = args[0] if args else None
        if (
            func is torch.ops.aten._to_copy.default
            and isinstance(source, torch.Tensor)
            and source.untyped_storage()._cdata in self.trainable
            and source.dtype != self.dtype
            and out.dtype == self.dtype
        ):
            self.copies.setdefault(source.untyped_storage()._cdata, []).append(out)
        return out

    def bytes_beyond(self, counted: set[int]) -> int:
        """Bytes of one copy of each weight, for the weights none of whose copies is in ``counted`` (a
        saved copy is an activation already)."""
        return sum(
            copies[0].untyped_storage().nbytes()
            for copies in self.copies.values()
            if not any(c.untyped_storage()._cdata in counted for c in copies)
        )


def _gpu_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, grad: bool) -> Any:
    """The fused attention a recent NVIDIA GPU runs: flash attention for fp16/bf16 with a head size up to
    256 (saves q, k, v, the output and a float32 log-sum-exp per query), else memory-efficient attention
    (the same, its log-sum-exp padded to 32 queries)."""
    d = q.shape[-1]
    if q.dtype in (torch.float16, torch.bfloat16) and d <= 256 and d % 8 == 0:
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[0]
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, None, grad, 0.0, False, scale=scale
    )[0]


@contextlib.contextmanager
def gpu_attention() -> Iterator[None]:
    """Attention as a GPU computes it. On fake (and meta) tensors ``scaled_dot_product_attention`` takes
    the math path: it materialises the score matrix in float32 and saves it for the backward pass (2.5 GiB
    per layer at 256x384, batch 4), which no GPU kernel does. CUDA picks flash or memory-efficient
    attention, which save the output and a log-sum-exp only; their fake implementations give the exact
    shapes, dtypes and FLOPs. Under autocast the inputs are cast first, as autocast does for SDPA."""
    original = F.scaled_dot_product_attention

    def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any = None,
              dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
              **kw: Any) -> torch.Tensor:  # fmt: skip
        simulated = isinstance(q, FakeTensor) or q.device.type == "meta"
        if attn_mask is not None or dropout_p or is_causal or kw or not simulated:
            return original(q, k, v, attn_mask, dropout_p, is_causal, scale=scale, **kw)
        device = q.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            q, k, v = (x.to(dtype) for x in (q, k, v))
        grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
        return _gpu_kernel(q, k, v, scale, grad)

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@contextlib.contextmanager
def device_autocast(device: str, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast(device, dtype)``, also for CUDA without a GPU: there ``torch.autocast`` switches
    itself off, so the same state is set by hand (enabled, dtype, the cast cache, cleared when the
    outermost region ends, as ``torch.autocast`` does). ``dtype=None``: no autocast."""
    if dtype is None:
        yield
        return
    if device != "cuda" or torch.cuda.is_available():
        with torch.autocast(device, dtype=dtype):
            yield
        return
    enabled, previous, cache = (
        torch.is_autocast_enabled(device), torch.get_autocast_dtype(device), torch.is_autocast_cache_enabled()
    )  # fmt: skip
    torch.set_autocast_enabled(device, True)
    torch.set_autocast_dtype(device, dtype)
    torch.set_autocast_cache_enabled(True)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled(device, enabled)
        torch.set_autocast_dtype(device, previous)
        torch.set_autocast_cache_enabled(cache)


@contextlib.contextmanager
def simulated() -> Iterator[None]:
    """What the analysis changes while it runs: GPU attention kernels, the noise scheduler built on the
    CPU (it computes tables with ``.item()``), and no warning from autocast about the missing GPU."""
    import interdyn.models.svd as svd_module

    scheduler_class = svd_module.EulerDiscreteScheduler

    def scheduler_on_cpu(**kw: Any) -> Any:
        with torch.device("cpu"):
            return scheduler_class(**kw)

    svd_module.EulerDiscreteScheduler = scheduler_on_cpu
    try:
        with gpu_attention(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
            yield
    finally:
        svd_module.EulerDiscreteScheduler = scheduler_class


def to_fake(module: torch.nn.Module, rules: str) -> FakeTensorMode:
    """Give a module built on the meta device fake storage on the device ``rules`` names (``"cuda"`` or
    ``"cpu"``), in place, and return the fake mode to run it under (nothing is allocated)."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    device = torch.device(rules)
    module._apply(lambda t: mode.fake_tensor_converter.from_meta_and_device(mode, t.detach(), device))
    return mode


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


def static_storages(module: torch.nn.Module) -> set[int]:
    """The storages of the module's parameters and buffers."""
    return {t.untyped_storage()._cdata for t in [*module.parameters(), *module.buffers()]}


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

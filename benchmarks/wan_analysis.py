"""Wan2.2 TI2V-5B: memory and FLOPs of one training step of InterDyn's branch at full size, on fake tensors
(shapes and dtypes only: nothing is allocated, no GPU is needed). Call the measuring functions inside
``simulated()`` and :func:`keyword_attention` (as :func:`analyze` does).

    python benchmarks/wan_analysis.py       # configs/wan_ssv2.yaml's clip and 480x832; writes docs/benchmarks.md
    python benchmarks/wan_analysis.py --no_write --recipes 48gb --clips 49x480x832

The step is the real one: the frozen transformer (``random:wan2.2-ti2v-5b`` built on the meta device) and
the default branch (:class:`~interdyn.models.wan.WanControlNetModel`, layers ``"half"``) under
:class:`~interdyn.training.flow_objective.FlowMatchingObjective`, with the VAE encoding the clip once
unless the latents are cached. As ``benchmarks/train_analysis.py`` does for SVD (and with its
machinery, ``benchmarks/fake_cuda.py``): the forward pass on fake CUDA tensors under CUDA's autocast rules
gives the saved activations, autocast's bf16 copies of the branch's weights and the largest tensor; the
forward and backward passes on fake CPU tensors give the FLOPs (torch's FLOP counter) and the backward's
largest tensor; attention saves only its output and log-sum-exp, as flash attention does. The parts that
depend on the strategy (what DDP replicates, FSDP shards or offloads) are counted from the parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_cuda import (  # noqa: E402
    GIB,
    LiveBytes,
    SavedBytes,
    WeightCopies,
    device_autocast,
    simulated,
    static_storages,
    to_fake,
)
from report import publish  # noqa: E402
from train_analysis import NoFlops, StepMemory  # noqa: E402
from train_recipes import ALLOCATOR_SLACK, CUDA_CONTEXT_GIB, OFFLOAD_CHUNK_BYTES, STATE_BYTES  # noqa: E402
from wan_recipes import (  # noqa: E402
    CARD_GIB,
    WAN_CLIP,
    WAN_CONFIG_RECIPES,
    WAN_LARGE_CLIP,
    WAN_RECIPES,
    describe,
    keep_fp32_cast,
)

PROMPT_TOKENS = 512  # Wan's text context length


@contextlib.contextmanager
def keyword_attention() -> Iterator[None]:
    """diffusers' attention dispatcher calls ``scaled_dot_product_attention(query=, key=, value=,
    enable_gqa=False)``; fake_cuda's GPU-kernel stand-in takes them by position: pass them on so."""
    inner = F.scaled_dot_product_attention

    def by_position(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None,
                    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                    enable_gqa: bool = False) -> torch.Tensor:  # fmt: skip
        if enable_gqa:
            return inner(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=True)
        return inner(query, key, value, attn_mask, dropout_p, is_causal, scale=scale)

    F.scaled_dot_product_attention = by_position
    try:
        yield
    finally:
        F.scaled_dot_product_attention = inner


def build_meta(layers: str = "half") -> tuple[Any, Any]:
    """The full-size Wan components and the default branch on the meta device, in their training dtypes:
    the frozen transformer in bf16 except the modules diffusers keeps in float32 when it loads the model
    in bf16 (``_keep_in_fp32_modules``), the VAE and the branch in float32."""
    from interdyn.models.wan import WAN22_TI2V_ARCHITECTURE, WanControlNetModel, build_wan

    with torch.device("meta"):
        wan = build_wan(WAN22_TI2V_ARCHITECTURE)
        branch = WanControlNetModel.from_transformer(wan.transformer, layers=layers, vae=wan.vae)
    keep_fp32_cast(wan.transformer, torch.bfloat16)
    wan.transformer.requires_grad_(False)
    wan.vae.requires_grad_(False)
    return wan, branch


def fake_step_models(rules: str, checkpointing: bool) -> tuple[Any, Any, Any]:
    """(components, branch, fake mode) on fake tensors of the device ``rules`` names, in training mode."""
    wan, branch = build_meta()
    root = torch.nn.ModuleDict({"transformer": wan.transformer, "vae": wan.vae, "branch": branch})
    mode = to_fake(root, rules)
    if checkpointing:
        wan.transformer.enable_gradient_checkpointing()
        branch.enable_gradient_checkpointing()
    root.train()
    return wan, branch, mode


def latent_shape(b: int, clip: dict[str, int]) -> tuple[int, ...]:
    """The latents of ``b`` clips: 48 channels, ``1 + (T - 1) / 4`` frames, x16 spatially."""
    return (b, 48, 1 + (clip["frames"] - 1) // 4, clip["height"] // 16, clip["width"] // 16)


def step_loss(wan: Any, branch: Any, b: int, clip: dict[str, int], device: str) -> torch.Tensor:
    """The flow-matching loss of ``b`` clips (zeros, noise level 1) on the (fake) ``device``, as
    InterDynWanModule computes it from the clips' latents."""
    from interdyn.training.flow_objective import FlowMatchingObjective

    latents = torch.zeros(latent_shape(b, clip), device=device)
    control = torch.zeros(b, clip["frames"], 3, clip["height"], clip["width"], device=device)
    prompt = torch.zeros(1, PROMPT_TOKENS, wan.transformer.config.text_dim, device=device)
    return (
        FlowMatchingObjective()
        .compute_loss(
            wan.transformer,
            latents,
            latents[:, :, :1],
            prompt,
            branch,
            control,
            sigma=torch.ones(b, device=device),
        )
        .loss
    )


def measure(rules: str, checkpointing: bool, b: int, clip: dict[str, int], backward: bool) -> StepMemory:
    """One step on fake tensors: the saved activations, autocast's weight copies, the largest tensor and
    (``backward``: CPU rules only) the FLOPs of the forward and the whole step."""
    from torch.utils.flop_counter import FlopCounterMode

    wan, branch, mode = fake_step_models(rules, checkpointing)
    trainable = {p.untyped_storage()._cdata for p in branch.parameters()}
    saved = SavedBytes(exclude=static_storages(wan.transformer) | static_storages(branch))
    result = StepMemory()
    counter = FlopCounterMode(display=False) if backward else NoFlops()
    with mode, device_autocast(rules, torch.bfloat16):
        with counter as flops, LiveBytes() as live, WeightCopies(trainable, torch.bfloat16) as copies:
            with torch.autograd.graph.saved_tensors_hooks(saved, lambda x: x):
                loss = step_loss(wan, branch, b, clip, rules)
        result.flops_forward = flops.get_total_flops()
        result.activations, result.by_dtype = saved.bytes, dict(saved.by_dtype)
        result.weight_copies = copies.bytes_beyond(saved.seen)
    if backward:
        with mode, FlopCounterMode(display=False) as flops, live:
            loss.backward()
        result.flops_step = result.flops_forward + flops.get_total_flops()
    result.largest = live.largest
    return result


def largest_block(b: int, clip: dict[str, int]) -> int:
    """Bytes one recomputed block saves during the backward pass under checkpointing: the most any
    transformer block (frozen or branch) saves in an un-checkpointed step under CUDA's rules."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    wan, branch, mode = fake_step_models("cuda", checkpointing=False)
    saved = SavedBytes(exclude=static_storages(wan.transformer) | static_storages(branch))
    starts: dict[int, int] = {}
    largest = 0

    def before(mod: torch.nn.Module, *_: Any) -> None:
        starts[id(mod)] = saved.bytes

    def after(mod: torch.nn.Module, *_: Any) -> None:
        nonlocal largest
        largest = max(largest, saved.bytes - starts.pop(id(mod)))

    for mod in [*wan.transformer.modules(), *branch.modules()]:
        if isinstance(mod, WanTransformerBlock):
            mod.register_forward_pre_hook(before)
            mod.register_forward_hook(after)
    with mode, device_autocast("cuda", torch.bfloat16):
        with torch.autograd.graph.saved_tensors_hooks(saved, lambda x: x):
            step_loss(wan, branch, b, clip, "cuda")
    return largest


def measure_vae(b: int, clip: dict[str, int]) -> tuple[int, int]:
    """(live peak bytes, FLOPs) of encoding ``b`` clips with the VAE (float32 weights, bf16 autocast, no
    autograd), on fake CUDA tensors; the first latent frame is the image latent, as InterDynWanModule
    takes it (the causal VAE encodes the first frame alone)."""
    from torch.utils.flop_counter import FlopCounterMode

    from interdyn.models.wan.ti2v import encode_video_latents

    wan, _ = build_meta()
    mode = to_fake(wan.vae, "cuda")
    with mode, device_autocast("cuda", torch.bfloat16), torch.no_grad():
        video = torch.zeros(b, clip["frames"], 3, clip["height"], clip["width"], device="cuda")
        with FlopCounterMode(display=False) as flops, LiveBytes(track_live=True) as live:
            encode_video_latents(wan.vae, video)  # its first latent frame is the image's (causal VAE)
    return live.peak, flops.get_total_flops()


def parameter_bytes() -> dict[str, int]:
    """Bytes and counts of the parts, in their training dtypes."""
    wan, branch = build_meta()
    block = max(sum(p.numel() for p in blk.parameters()) for blk in wan.transformer.blocks)
    return {
        "transformer_params": sum(p.numel() for p in wan.transformer.parameters()),
        "transformer_bytes": sum(p.numel() * p.element_size() for p in wan.transformer.parameters()),
        "vae_params": sum(p.numel() for p in wan.vae.parameters()),
        "vae_bytes": sum(p.numel() * p.element_size() for p in wan.vae.parameters()),
        "branch_params": sum(p.numel() for p in branch.parameters()),
        "largest_param": max(p.numel() for p in branch.parameters()),
        "block_params": block,
    }


def static_parts(recipe: dict[str, Any], sizes: dict[str, int]) -> dict[str, float]:
    """Bytes per GPU that stay for the whole run: what DDP replicates, FSDP shards (full shard: everything
    divided by the GPUs) or offloads to host memory (FSDP's CPU offload: weights, gradients and the Adam
    step on the host). The VAE stays on the device unless the latents are cached."""
    strategy, gpus = recipe["strategy"], recipe["gpus"]
    share = 0.0 if strategy == "fsdp_offload" else 1.0 / gpus if strategy == "fsdp" else 1.0
    branch = sizes["branch_params"]
    optimizer = recipe.get("optimizer", "adam")
    return {
        "frozen": sizes["transformer_bytes"] * share,
        "vae": 0 if recipe.get("cached") else sizes["vae_bytes"],
        "branch": branch * 4 * share,  # float32 (bf16-mixed keeps the trained weights in float32)
        "gradients": branch * 4 * share,  # DDP with gradient_as_bucket_view: the buckets are the gradients
        "optimizer_state": branch * STATE_BYTES[optimizer] * share,
    }


def memory_row(name: str, recipe: dict[str, Any], sizes: dict[str, int], step: StepMemory, vae: tuple[int, int],
               segment: int, clip: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    """One recipe's row: static parts per GPU, the transients, the peak and whether it fits its card."""
    b = recipe["batch"]
    parts = static_parts(recipe, sizes)
    fsdp = recipe["strategy"].startswith("fsdp")
    # FSDP gathers each block's weights in bf16 (mixed precision) just before it runs and prefetches the
    # next: two blocks' weights, and one block's bf16 gradients in the backward; autocast has no fp32
    # branch weight left to cast, so no copies
    units = 3 * sizes["block_params"] * 2 if fsdp else 0
    copies = 0 if fsdp else step.weight_copies
    backward = segment + 3 * step.largest
    step_bytes = sizes["largest_param"] * 4 + (
        OFFLOAD_CHUNK_BYTES if recipe.get("optimizer") == "adam_offload" else 0
    )
    encoder_peak, encoder_flops = (0, 0) if recipe.get("cached") else vae
    transient = max(
        encoder_peak, step.activations + copies + units, step.activations + backward + units, step_bytes
    )
    static = sum(parts.values())
    estimate = static + transient
    total = estimate * (1 + ALLOCATOR_SLACK) / GIB + CUDA_CONTEXT_GIB
    card = CARD_GIB[recipe["card"]]
    flops = step.flops_step + encoder_flops
    return {
        "recipe": name, "clip": dict(clip), "batch": b, "accumulate": recipe.get("accumulate", 1),
        "gpus": recipe["gpus"], "switches": describe(recipe),
        "tflop_step": flops / 1e12, "tflop_per_sample": flops / 1e12 / b, "tflop_vae_per_sample": encoder_flops / 1e12 / b,
        **{f"{k}_gib": v / GIB for k, v in parts.items()},
        "static_gib": static / GIB, "weight_copies_gib": copies / GIB, "fsdp_units_gib": units / GIB,
        "activations_gib": step.activations / GIB, "activations_fp32_gib": step.by_dtype.get("float32", 0) / GIB,
        "backward_bound_gib": backward / GIB, "encoder_peak_gib": encoder_peak / GIB,
        "transient_gib": transient / GIB, "estimate_gib": estimate / GIB, "with_context_gib": total,
        "card_gib": card, "fits": total <= card,
    }  # fmt: skip


def analyze(names: list[str], clip: dict[str, int]) -> list[dict[str, Any]]:
    """The rows of ``names`` (recipes of :data:`WAN_RECIPES`) at ``clip``: each distinct (checkpointing,
    batch) step measured once under each rule set, each batch's VAE encoding once."""
    rows = []
    with simulated(), keyword_attention():
        sizes = parameter_bytes()
        steps: dict[tuple[bool, int], StepMemory] = {}
        vae: dict[int, tuple[int, int]] = {}
        segment: dict[int, int] = {}
        for name in names:
            recipe = WAN_RECIPES[name]
            ckpt, b = bool(recipe.get("checkpointing")), recipe["batch"]
            if (ckpt, b) not in steps:
                cuda = measure("cuda", ckpt, b, clip, backward=False)
                cpu = measure("cpu", ckpt, b, clip, backward=True)
                cuda.flops_forward, cuda.flops_step = cpu.flops_forward, cpu.flops_step
                cuda.largest = max(cuda.largest, cpu.largest)
                steps[ckpt, b] = cuda
            if ckpt and b not in segment:
                segment[b] = largest_block(b, clip)
            if not recipe.get("cached") and b not in vae:
                vae[b] = measure_vae(b, clip)
            row = memory_row(
                name,
                recipe,
                sizes,
                steps[ckpt, b],
                vae.get(b, (0, 0)),
                segment.get(b, 0) if ckpt else 0,
                clip,
            )
            rows.append({**row, "params_m": {k: v / 1e6 for k, v in sizes.items() if k.endswith("params")}})
            print(json.dumps(rows[-1]), flush=True)
    return rows


COLUMNS = [  # (heading, row key) of the table, GiB per GPU
    ("frozen transformer", "frozen_gib"),
    ("VAE", "vae_gib"),
    ("branch (fp32)", "branch_gib"),
    ("gradients (fp32)", "gradients_gib"),
    ("Adam state", "optimizer_state_gib"),
    ("bf16 weight copies", "weight_copies_gib"),
    ("FSDP gathered blocks", "fsdp_units_gib"),
    ("activations", "activations_gib"),
    ("backward working set", "backward_bound_gib"),
    ("allocated peak", "estimate_gib"),
    ("+ slack + context", "with_context_gib"),
]


def clip_name(clip: dict[str, int]) -> str:
    """``49 frames at 256x384``."""
    return f"{clip['frames']} frames at {clip['height']}x{clip['width']}"


def analysis_text(rows: list[dict[str, Any]], today: str) -> str:
    """The rows (of one or more clips) as the markdown section ``wan-analysis``: a summary of the shipped
    configs' recipes at each clip, then every recipe, clip by clip."""
    p = rows[0]["params_m"]
    clips = list({clip_name(r["clip"]): r["clip"] for r in rows}.values())
    lines = [
        "## Wan2.2 TI2V-5B: memory and FLOPs per training step",
        "",
        f"{today}. Analysis on fake tensors (`python benchmarks/wan_analysis.py`), not a GPU measurement:"
        " shapes and dtypes only. Full-size architecture (`random:wan2.2-ti2v-5b`), the default branch"
        f' (layers `"half"`); parameters (millions): transformer {p["transformer_params"]:.0f}, VAE'
        f" {p['vae_params']:.0f}, branch {p['branch_params']:.0f}. Clips: "
        + ", ".join(f"{clip_name(c)} ({tokens(c)} tokens)" for c in clips)
        + f". GiB (2^30 bytes) per GPU; `+ slack + context`: {ALLOCATOR_SLACK:.0%} allocator fragmentation"
        f" and {CUDA_CONTEXT_GIB} GiB of CUDA context, both assumed; what torch offers, assumed: an 80 GB H100"
        f" {CARD_GIB['80gb']} GiB, a 48 GB card {CARD_GIB['48gb']} (the smallest of its class).",
        "",
        "| config | clip | recipe | GPUs | clips per GPU x accumulate | TFLOP per clip | peak GiB per GPU | card GiB | fits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for config, name in WAN_CONFIG_RECIPES.items():
        for r in (r for r in rows if r["recipe"] == name):
            lines.append(
                f"| `{config}` | {clip_name(r['clip'])} | {name}: {r['switches']} | {r['gpus']} |"
                f" {r['batch']} x {r['accumulate']} | {r['tflop_per_sample']:.0f} | {r['with_context_gib']:.1f} |"
                f" {r['card_gib']} | {'yes' if r['fits'] else 'no'} |"
            )
    for clip in clips:
        lines += [
            "",
            f"{clip_name(clip)}:",
            "",
            "| recipe | settings | clips per GPU | TFLOP per clip (VAE) | "
            + " | ".join(h for h, _ in COLUMNS)
            + " | fits |",
            "|---|---|---|---|" + "---|" * len(COLUMNS) + "---|",
        ]
        for r in (r for r in rows if r["clip"] == clip):
            values = " | ".join(f"{r[k]:.1f}" for _, k in COLUMNS)
            lines.append(
                f"| {r['recipe']} | {r['switches']} | {r['batch']} | {r['tflop_per_sample']:.0f}"
                f" ({r['tflop_vae_per_sample']:.0f}) | {values} | {'yes' if r['fits'] else 'no'} ({r['card_gib']}) |"
            )
    return "\n".join(lines)


def tokens(clip: dict[str, int]) -> int:
    """Transformer tokens of a clip: latent frames x (H / 32) x (W / 32)."""
    return (1 + (clip["frames"] - 1) // 4) * (clip["height"] // 32) * (clip["width"] // 32)


def parse_clip(text: str) -> dict[str, int]:
    """``49x256x384`` -> ``{"frames": 49, "height": 256, "width": 384}``."""
    frames, height, width = (int(v) for v in text.split("x"))
    return {"frames": frames, "height": height, "width": width}


def main(argv: list[str] | None = None) -> int:
    """Analyse the recipes at each clip and write the section (``--no_write``: print only)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(WAN_RECIPES), choices=list(WAN_RECIPES))
    default = [f"{c['frames']}x{c['height']}x{c['width']}" for c in (WAN_CLIP, WAN_LARGE_CLIP)]
    parser.add_argument("--clips", nargs="+", default=default, help="FRAMESxHEIGHTxWIDTH each")
    parser.add_argument("--no_write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    rows = [row for clip in args.clips for row in analyze(args.recipes, parse_clip(clip))]
    publish(analysis_text(rows, time.strftime("%Y-%m-%d")), "wan-analysis", not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a Wan branch follow its driver masks? The learning proof of the Wan backbone on the built-in world.

No Wan weights fit a CPU, so the frozen model is a small Wan2.2-TI2V-shaped transformer of diffusers' own
classes that this script first trains on the clips itself (the backbone's own flow-matching objective, all
weights), as the world's SVD was trained before its branch. Then, with that model frozen, it trains an
InterDyn branch through ``InterDynWanModule`` and Lightning on the same shards, and scores samples.

The training clips are counterfactual groups: each group is one scene (the same first frame) with several
driver paths. A model that only remembers scenes cannot tell the members of a group apart; only the masks
can. The score is on the sampled *latents* (a VAE with random weights does not reconstruct pixels), inside
the latent cells the driver visits, frames after the first:

- ``control``: each clip with its own masks;
- ``sibling masks``: each clip with the masks of another member of its group, scored against its own clip
  (high when the branch follows the masks it is given);
- ``follows sibling``: the same samples scored against the sibling's clip inside the sibling's masks (as
  low as ``control`` when the video goes where the given masks go);
- ``blank masks``: masks with no driver;
- ``no branch``: the frozen model alone (``conditioning_scale 0``).

The random VAE's latents are rescaled to unit variance per channel on the training clips (what
``latents_mean`` / ``latents_std`` do for the real VAE), so that the clips' differences are not lost under
the noise of flow matching.

Run ``python -m experiments.world.wan_follow --out runs/wan_follow`` (about 10 minutes on 2 CPU cores);
it writes ``table.md`` and ``results.json``. ``tests/experiments/test_wan_follow.py`` runs it (slow).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

MASK_CHANNELS = (16, 32, 64, 128)


@dataclass(frozen=True)
class FollowSettings:
    """The experiment's settings (defaults: the documented run)."""

    groups: int = 2  # training scenes
    variants: int = 8  # driver paths per scene: groups x variants training clips
    held_groups: int = 1  # held-out scenes, scored too
    size: int = 64
    num_frames: int = 13  # 1 + 4k: four latent frames
    fps: float = 7.0
    heads: int = 4
    head_dim: int = 96
    num_layers: int = 4
    base_steps: int = 500
    base_lr: float = 1e-3
    branch_steps: int = 1200
    branch_lr: float = 3e-4
    batch_size: int = 4
    sample_steps: int = 20
    seed: int = 0


def write_groups(out: Path, s: FollowSettings) -> dict[str, str]:
    """Real world shards of counterfactual groups: ``train`` (seed 0) and ``held`` (other scenes, seed 11)."""
    from data_prep.synthetic import write_split
    from data_prep.synthetic_world import builtin_world

    world = builtin_world(s.size)
    common = {"world": world, "num_frames": s.num_frames + 1, "fps": s.fps, "variants": s.variants}
    write_split(out / "train", "test", s.groups, seed=0, progress=False, **common)
    write_split(out / "held", "test", s.held_groups, seed=11, progress=False, **common)
    return {name: str(out / name / "test" / "*.tar") for name in ("train", "held")}


def read_groups(shards: str, s: FollowSettings) -> dict[str, Any]:
    """A split's clips, in group order: ``pixel_values`` and ``control`` ``(N, T, 3, H, W)``, ``groups``."""
    from interdyn.world.ceiling import test_clips

    clips = [c for c in test_clips(shards, s.size, num_frames=s.num_frames) if c["group"] is not None]
    return {
        "pixel_values": torch.stack([c["pixel_values"] for c in clips]),
        "control": torch.stack([c["control"] for c in clips]),
        "groups": [c["group"] for c in clips],
    }


def wan_architecture(s: FollowSettings) -> dict[str, Any]:
    """The tiny preset widened so that a token's width exceeds its output (48 channels x 2 x 2)."""
    from interdyn.models.wan.components import TINY_WAN_ARCHITECTURE

    width = s.heads * s.head_dim
    transformer = {
        **TINY_WAN_ARCHITECTURE["transformer"],
        "num_attention_heads": s.heads,
        "attention_head_dim": s.head_dim,
        "ffn_dim": 2 * width,
        "num_layers": s.num_layers,
    }
    return {"transformer": transformer, "seed": s.seed}


@torch.no_grad()
def calibrate_latents(vae: Any, pixel_values: torch.Tensor) -> None:
    """Set the VAE's ``latents_mean`` / ``latents_std`` to its latents' per-channel statistics on the clips."""
    from interdyn.models.wan.ti2v import denormalize_latents, encode_video_latents

    raw = denormalize_latents(vae, encode_video_latents(vae, pixel_values))
    dims = (0, 2, 3, 4)
    vae.register_to_config(latents_mean=raw.mean(dims).tolist(), latents_std=raw.std(dims).tolist())


def pretrain_base(
    module: Any, pixel_values: torch.Tensor, s: FollowSettings, log: Callable[[str], None]
) -> list[float]:
    """Train all of ``module``'s transformer on the clips with its flow-matching objective (no branch);
    returns the losses. The transformer is frozen again afterwards."""
    latents, image_latents = module.encode(pixel_values)
    transformer = module.transformer.requires_grad_(True).train()
    optimizer = torch.optim.Adam(transformer.parameters(), lr=s.base_lr)
    generator = torch.Generator().manual_seed(s.seed)
    losses = []
    for step in range(s.base_steps):
        pick = torch.randperm(len(latents), generator=generator)[: s.batch_size]
        loss = module.flow.compute_loss(
            transformer, latents[pick], image_latents[pick], module.prompt_embeds, generator=generator
        ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == s.base_steps - 1:
            log(f"base step {step}: loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
    transformer.requires_grad_(False).eval()
    return losses


def make_base(
    out: Path, train: dict[str, Any], s: FollowSettings, log: Callable[[str], None]
) -> dict[str, Any]:
    """The frozen model of the experiment: built, its latents calibrated, trained on the clips and saved as
    a diffusers Wan folder (``out/base``)."""
    from interdyn.models.wan.components import WanComponents, save_wan
    from interdyn.training.wan_module import InterDynWanModule

    L.seed_everything(s.seed, verbose=False)
    module = InterDynWanModule(wan=wan_architecture(s), objective={"shift": 1.0})
    calibrate_latents(module.vae, train["pixel_values"])
    started = time.perf_counter()
    losses = pretrain_base(module, train["pixel_values"], s, log)
    save_wan(WanComponents(module.transformer, module.vae, module.scheduler), out / "base")
    return {
        "folder": str(out / "base"),
        "loss_last_50": sum(losses[-50:]) / max(1, len(losses[-50:])),
        "seconds": time.perf_counter() - started,
    }


def train_branch(base: str, shards: str, s: FollowSettings, progress: bool = True) -> tuple[Any, float]:
    """An InterDyn branch on the frozen ``base``, trained by Lightning on the shards (the real module and
    data module); returns it and the wall time."""
    from interdyn.data import ShardDataModule
    from interdyn.data.clip_spec import ClipSpec
    from interdyn.training.wan_module import InterDynWanModule

    L.seed_everything(s.seed, verbose=False)
    module = InterDynWanModule(
        wan=base, layers="all", conditioning_embedding_out_channels=MASK_CHANNELS, learning_rate=s.branch_lr,
        objective={"shift": 1.0}, sampling={"num_inference_steps": s.sample_steps},
    )  # fmt: skip
    clip = ClipSpec(
        num_frames=s.num_frames, fps=s.fps, height=s.size, width=s.size, crop="center", window="start"
    )
    data = ShardDataModule(
        train_shards=shards, clip=clip, batch_size=s.batch_size, num_workers=0, pin_memory=False,
        persistent_workers=False, shuffle_buffer=s.groups * s.variants, seed=s.seed,
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", max_steps=s.branch_steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
    )  # fmt: skip
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return module.eval(), time.perf_counter() - started


def driver_cells(control: torch.Tensor, spatial: int = 16, temporal: int = 4) -> torch.Tensor:
    """The latent cells a driver visits: ``(N, 1, F, h, w)`` from masks ``(N, T, C, H, W)`` (frames packed as
    the VAE packs them: the first alone, then ``temporal`` at a time)."""
    from interdyn.models.wan.controlnet import check_clip_frames

    check_clip_frames(control.shape[1], temporal)  # 1 + 4k frames, or one sentence
    driver = (control[:, :, 0] > 0).float()
    first, rest = driver[:, :1], driver[:, 1:]
    rest = rest.unflatten(1, (rest.shape[1] // temporal, temporal)).amax(2)
    return F.max_pool2d(torch.cat([first, rest], 1), spatial).unsqueeze(1)


def siblings(groups: list[str]) -> list[int]:
    """For each clip, the next member of its group (cyclically)."""
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    return [members[g][(members[g].index(i) + 1) % len(members[g])] for i, g in enumerate(groups)]


@torch.no_grad()
def score(module: Any, split: dict[str, Any], s: FollowSettings) -> dict[str, float]:
    """The table's rows for one split (see the module docstring); each value is a squared error of latents."""
    pixels, control = split["pixel_values"], split["control"]
    latents, _ = module.encode(pixels)
    mate = siblings(split["groups"])
    cells = driver_cells(control)[:, :, 1:]

    def sample(masks: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        frames = module.pipeline()(
            pixels[:, 0], module.prompt_embeds, control=masks, num_inference_steps=s.sample_steps,
            conditioning_scale=scale, generator=torch.Generator().manual_seed(s.seed), output_type="latent",
        ).frames  # fmt: skip
        return frames.float()[:, :, 1:]

    def inside(videos: torch.Tensor, truth: torch.Tensor, where: torch.Tensor) -> float:
        error = (videos - truth[:, :, 1:]).square().mean(1, keepdim=True)
        return float((error * where).sum() / where.sum())

    swapped = sample(control[mate])
    return {
        "control": inside(sample(control), latents, cells),
        "sibling masks": inside(swapped, latents, cells),
        "follows sibling": inside(swapped, latents[mate], cells[mate]),
        "blank masks": inside(sample(-torch.ones_like(control)), latents, cells),
        "no branch": inside(sample(control, scale=0.0), latents, cells),
    }


def table(results: dict[str, Any]) -> str:
    """The markdown table of :func:`run`'s results."""
    rows = list(results["train"])
    lines = ["| row | training groups | held-out groups |", "|---|---|---|"]
    lines += [f"| {r} | {results['train'][r]:.4f} | {results['held'][r]:.4f} |" for r in rows]
    return "\n".join(lines) + "\n"


def run(
    out: Path, s: FollowSettings, log: Callable[[str], None] = print, progress: bool = True
) -> dict[str, Any]:
    """The whole experiment: shards, base, branch, scores (written to ``out/results.json`` and ``table.md``)."""
    out.mkdir(parents=True, exist_ok=True)
    shards = write_groups(out / "shards", s)
    train, held = read_groups(shards["train"], s), read_groups(shards["held"], s)
    base = make_base(out, train, s, log)
    log(f"base trained in {base['seconds']:.0f} s; training the branch")
    module, seconds = train_branch(base["folder"], shards["train"], s, progress)
    log(f"branch trained in {seconds:.0f} s; sampling")
    results = {
        "settings": dataclasses.asdict(s),
        "base": base,
        "branch_seconds": seconds,
        "train": score(module, train, s),
        "held": score(module, held, s),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "table.md").write_text(table(results))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("runs/wan_follow"))
    for field in dataclasses.fields(FollowSettings):
        parser.add_argument(f"--{field.name}", type=type(field.default), default=field.default)
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    results = run(out, FollowSettings(**args))
    print(table(results), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

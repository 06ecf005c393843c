"""The built-in interaction dataset: a small 2-D rigid-body world simulated with numpy.

Each video shows a few coloured discs at rest and a *driver* (a hand reaching in on an arm, or an
object sliding in) that moves along a scripted straight path. Collisions are elastic impulses between
discs (the driver is kinematic: infinitely heavy), discs slow down under Coulomb friction and bounce
off the walls, so a pushed disc can hit another (force propagation). The control signal is the
driver's mask; every disc's mask and position per frame are kept for evaluation (a physics check:
where did the pushed objects end up compared with the simulation).

The world (discs, driver paths, simulation, rendering) is :mod:`data_prep.synthetic_world`; this module
makes the dataset's samples and writes them with the resumable build of every preparer.

The test split is made of counterfactual groups: the same first frame (same scene, driver at the same
entry point) with different driver paths. Everything is deterministic per seed. An optional ``seen``
split holds groups of the same kind whose first member is a training clip (``--seen_groups``): a model
scored on them shows whether it fails to generalise or fails to fit (experiments/world/README.md). An
optional ``long`` split holds held-out clips of ``--long_frames`` frames (``--long``, scenes of their
own), for videos longer than one model window (docs/long.md).

    python -m data_prep.synthetic --out data/shards/synthetic --train 512 --val 32 --test_groups 16
    python -m data_prep.synthetic --out data/shards/world --builtin_world --size 64 64 --fps 7 \\
        --train 0 --val 0 --test_groups 0 --long 6 --long_frames 38
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.build import Item, PlanMismatchError, build_split
from data_prep.common import STARTUP, prep_times
from data_prep.synthetic_world import World, builtin_world, make_video
from interdyn.commands.spelling import ScriptParser
from interdyn.data.shard_format import encode_masks
from interdyn.data.video import encode_video
from interdyn.utils.timing import PhaseTimes

__all__ = ["SyntheticMaker", "World", "builtin_world", "make_video", "sample_fields", "write_split"]


def sample_fields(
    video: dict[str, Any], key: str, split: str, fps: float, extra: dict[str, Any]
) -> dict[str, Any]:
    """The shard fields of one simulated clip (the shard format of ``docs/data.md``)."""
    frames = video["frames"]
    discs, path, sim = video["discs"], video["path"], video["sim"]
    t, h, w, _ = frames.shape
    meta = {
        "id": key.split("-", 1)[1],
        "dataset": "synthetic",
        "split": split,
        "fps": fps,
        "num_frames": t,
        "height": h,
        "width": w,
        "label": f"{path.kind} pushes {len(discs)} discs",
        "template": "[driver] pushes [objects]",
        "objects": [d.name for d in discs],
        "mask_source": "synthetic",
        "driver": {
            "kind": path.kind,
            "radius": path.radius,
            "speed": path.speed,
            "direction": path.direction.tolist(),
            "stop_time": None if math.isinf(sim["driver_stop_time"]) else sim["driver_stop_time"],
            "positions": np.round(sim["driver"], 3).tolist(),
        },
        "physics": {
            "radii": [d.radius for d in discs],
            "masses": [d.mass for d in discs],
            "colours": [d.colour.tolist() for d in discs],
            "positions": np.round(sim["positions"], 3).tolist(),
            "collisions": [[int(f), a, b] for f, a, b in sim["events"]],
        },
        **extra,
    }
    return {
        "video.mp4": encode_video(frames, fps),
        "masks.npz": encode_masks(video["control"], video["objects"], [d.name for d in discs]),
        "json": meta,
    }


@dataclass(frozen=True)
class SyntheticMaker:
    """Makes item ``i`` of a split: one clip, or a counterfactual group of ``variants`` clips sharing the
    first frame (keys ``..._v<k>``). Each item draws from its own generator, seeded by ``(seed, split,
    i)``, so items can be made in any order or process and still give the same samples. With
    ``seed_split`` the items are seeded as that split's: ``SyntheticMaker("seen", ..., variants=3,
    seed_split="train")`` makes groups whose member ``v0`` is training clip ``i``."""

    split: str
    seed: int
    world: World
    num_frames: int
    fps: float
    variants: int = 1
    seed_split: str | None = None

    def __call__(self, item: Item) -> list[tuple[str, dict[str, Any]]]:
        i = int(item.data)
        # "long" draws its own scenes: held out from every other split
        numbers = {"train": 0, "validation": 1, "test": 2, "long": 4}
        split_number = numbers.get(self.seed_split or self.split, 3)
        rng = np.random.default_rng([self.seed, split_number, i])
        first = make_video(rng, self.world, self.num_frames, self.fps)
        samples = []
        for v in range(self.variants):
            video = (
                first
                if v == 0
                else make_video(rng, self.world, self.num_frames, self.fps, first["scene"], first["entry"])
            )
            key = f"synthetic-{self.split}-{i:06d}" + (f"_v{v}" if self.variants > 1 else "")
            extra = {"group": f"{self.split}-{i:06d}", "variant": v} if self.variants > 1 else {}
            samples.append((key, sample_fields(video, key, self.split, self.fps, extra)))
        return samples


def write_split(
    out: Path,
    split: str,
    count: int,
    seed: int,
    world: World,
    num_frames: int,
    fps: float,
    variants: int = 1,
    shard_size: int = 100,
    progress: bool = True,
    workers: int = 1,
    seed_split: str | None = None,
    times: PhaseTimes | None = None,
) -> dict[str, Any]:
    """Write ``count`` clips (train/val) or ``count`` counterfactual groups of ``variants`` clips (test)
    with the resumable build of every preparer (:func:`data_prep.build.build_split`): ``shard_size``
    clips (or groups) per shard, an interrupted run continues where it stopped, and a split made with
    other settings is replaced (the data is generated, nothing is lost). ``seed_split`` seeds the items
    as another split's (:class:`SyntheticMaker`). ``times`` gets the split's phases (planning, building,
    indexing)."""
    maker = SyntheticMaker(split, seed, world, num_frames, fps, variants, seed_split)
    items = [Item(f"{i:06d}", i) for i in range(count)]
    settings = {
        "seed": seed,
        "world": dataclasses.asdict(world),
        "fps": fps,
        "num_frames": num_frames,
        "variants": variants,
    }
    if seed_split is not None:
        settings["seed_split"] = seed_split
    options = {
        "settings": settings,
        "provenance": {"generator": "data_prep.synthetic"},
        "shard_size": shard_size,
        "workers": workers,
        "progress": progress,
        "times": times,
    }
    try:
        result = build_split(out, "synthetic", split, items, maker, **options)
    except PlanMismatchError:
        result = build_split(out, "synthetic", split, items, maker, overwrite=True, **options)
    return {"split": split, "samples": result.num_samples, "shards": result.num_shards}


def build_parser() -> ScriptParser:
    """The command line of ``python -m data_prep.synthetic``."""
    parser = ScriptParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("data/shards/synthetic"),
        help="output root (split folders go inside)",
    )
    parser.add_argument("--train", type=int, default=512, help="training clips")
    parser.add_argument("--val", type=int, default=32, help="validation clips")
    parser.add_argument("--test_groups", type=int, default=16, help="counterfactual test groups")
    parser.add_argument(
        "--seen_groups",
        type=int,
        default=0,
        help="counterfactual groups whose first member is training clip i (split `seen`, for telling "
        "underfitting from overfitting; needs the same --seed and physics as the training clips)",
    )
    parser.add_argument(
        "--long",
        type=int,
        default=0,
        help="held-out long clips (split `long`, scenes of their own) of --long_frames frames, with every "
        "disc's position per frame, for videos longer than one model window (docs/long.md)",
    )
    parser.add_argument("--long_frames", type=int, default=38, help="frames per clip of the `long` split")
    parser.add_argument(
        "--variants", type=int, default=3, help="driver paths per test group (same first frame)"
    )
    parser.add_argument(
        "--size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"), help="frame size (even)"
    )
    parser.add_argument("--frames", type=int, default=32, help="frames per video")
    parser.add_argument("--fps", type=float, default=14.0, help="frame rate of the rendered videos")
    parser.add_argument(
        "--friction",
        type=float,
        default=None,
        help="deceleration of rolling discs in px/s^2 (default: 80 at 128 px, scaled with the frame size)",
    )
    parser.add_argument(
        "--driver_restitution",
        type=float,
        default=None,
        help="restitution of the driver's pushes (default 1): 1 flings a struck disc off at up to twice the driver's "
        'speed, 0 pushes it along (experiments/world/README.md, "A slower world")',
    )
    parser.add_argument(
        "--builtin_world",
        action="store_true",
        help="the built-in world's physics (`make world-data`, docs/world.md) at a square --size; "
        "--friction and --driver_restitution must then be left out",
    )
    parser.add_argument(
        "--shard_size", type=int, default=100, help="samples per shard (test: groups per shard)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes that make the clips")
    return parser


def world_of(args: argparse.Namespace, parser: ScriptParser) -> World:
    """The world that ``args`` ask for: the built-in one, or one of their size, friction and restitution
    (errors through ``parser``)."""
    if args.size[0] % 2 or args.size[1] % 2:
        parser.error("--size must be even (libx264)")
    if args.builtin_world:
        if args.size[0] != args.size[1]:
            parser.error("--builtin_world needs a square --size")
        if args.friction is not None or args.driver_restitution is not None:
            parser.error("--builtin_world sets the friction and the driver's restitution itself")
        return builtin_world(args.size[0])
    friction = args.friction if args.friction is not None else 80.0 * min(args.size) / 128
    restitution = 1.0 if args.driver_restitution is None else args.driver_restitution
    if not 0.0 <= restitution <= 1.0:
        parser.error("--driver_restitution must be between 0 and 1")
    return World(height=args.size[0], width=args.size[1], friction=friction, driver_restitution=restitution)


def main(argv: list[str] | None = None) -> int:
    times = prep_times("data_prep.synthetic", argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    world = world_of(args, parser)
    times.add(STARTUP, times.total())
    if args.train and args.seen_groups > args.train:
        parser.error(f"--seen_groups {args.seen_groups} is more than the {args.train} training clips")
    if args.long and args.long_frames < 2:
        parser.error("--long_frames must be at least 2")
    for split, count, variants, seed_split in (
        ("train", args.train, 1, None),
        ("validation", args.val, 1, None),
        ("test", args.test_groups, args.variants, None),
        ("seen", args.seen_groups, args.variants, "train"),
        ("long", args.long, 1, None),
    ):
        if count > 0:
            info = write_split(
                args.out,
                split,
                count,
                args.seed,
                world,
                args.long_frames if split == "long" else args.frames,
                args.fps,
                variants,
                args.shard_size,
                workers=args.workers,
                seed_split=seed_split,
                times=times,
            )
            print(
                f"{info['split']}: {info['samples']} samples in {info['shards']} shard(s) -> {args.out / split}"
            )
    times.show()
    return 0


if __name__ == "__main__":
    sys.exit(main())

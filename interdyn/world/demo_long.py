"""`make demo-long`'s steps after the world's long clips are made: sample the same held-out long clips with
the same seeds in several ways, score them per window with ``interdyn evaluate``, and write one table and
pictures (docs/long.md, "On the world").

    python -m interdyn.world.demo_long --out runs/demo_long [--clips 4] [--steps 8] [--context_branch DIR]

The rows: the world's SVD without control, and the shipped branch with one pass over all frames
(``single``), naive chaining (``chain``) and held overlaps (``hold``); a context branch (``context``) when
one is given (the shipped one, ``weights/world/context``, by default); and the ground truth through the SVD's VAE (what every model's frames pass through). Every
row's videos are written as ``<out>/<row>/<key>.mp4`` and scored from those files as any method's videos
are (``<out>/<row>/evaluation/metrics.json``). A row made by an earlier run with the same settings (its
``row.json``) is not sampled again: delete its folder to make it anew.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from interdyn.commands.parsers import run_command
from interdyn.commands.spelling import ScriptParser
from interdyn.errors import InterDynError
from interdyn.utils.files import write_atomic
from interdyn.utils.timing import PhaseTimes

LONG_SHARDS = "data/shards/world/long/*.tar"
CONTEXT_BRANCH = "weights/world/context"
TRUTH_ROW = "ground truth through the VAE"


@dataclass(frozen=True)
class Row:
    """One way to make the long videos: a branch (None: the SVD alone, no control) and the sampling
    settings it is run with."""

    title: str
    name: str
    branch: str | None
    overrides: dict[str, Any] = field(default_factory=dict)


def rows(branch: str, context_branch: str | None = None) -> list[Row]:
    """The models of the table, in its order (the ground truth through the VAE comes last, apart)."""
    out = [
        Row(
            "SVD, no control (hold)", "no_control", None, {"conditioning_scale": 0.0, "continuation": "hold"}
        ),
        Row("shipped branch, one pass (single)", "single", branch, {"continuation": "single"}),
        Row("shipped branch, naive chaining (chain)", "chain", branch, {"continuation": "chain"}),
        Row("shipped branch, held overlaps (hold)", "hold", branch, {"continuation": "hold"}),
    ]
    if context_branch:
        out.append(Row("context branch (context)", "context", context_branch, {"continuation": "context"}))
    return out


def load_clips(shards: str, count: int, num_frames: int, size: int) -> list[dict[str, Any]]:
    """The first ``count`` clips of ``shards``, ``num_frames`` frames each (one sentence when there are
    fewer, or shorter ones)."""
    from interdyn.world.ceiling import test_clips

    try:
        clips = list(test_clips(shards, size, count, num_frames))
    except FileNotFoundError as err:
        raise InterDynError(f"{err}; make the long clips first (make demo-long does)") from None
    if len(clips) < count:
        raise InterDynError(
            f"{shards} gave {len(clips)} clips of {num_frames} frames, {count} were asked for: make more "
            "(python -m data_prep.synthetic ... --long N --long_frames F)"
        )
    return clips


def sample_row(
    module: torch.nn.Module, clips: list[dict[str, Any]], row: Row, steps: int, overlap: int, seed: int
) -> torch.Tensor:
    """``(B, T, 3, H, W)`` in [0, 1]: every clip sampled together, each with its key's seed (the videos it
    gets alone), from its first frame and its whole control."""
    from interdyn.data.sampling import key_seed

    pixels = torch.stack([c["pixel_values"] for c in clips])
    control = torch.stack([c["control"] for c in clips])
    seeds = [key_seed(seed, c["key"]) for c in clips]
    settings = {"num_inference_steps": steps, "window_overlap": overlap, **row.overrides}
    return module.sample(pixels, control, seed=seeds, num_videos_per_prompt=1, **settings)[:, 0]


def truth_through_vae(svd: str, clips: list[dict[str, Any]]) -> torch.Tensor:
    """``(B, T, 3, H, W)`` in [0, 1]: each clip's frames encoded by the SVD's VAE and decoded together."""
    from diffusers import AutoencoderKLTemporalDecoder

    from interdyn.models.hub import load_component
    from interdyn.world.ceiling import reconstruct

    vae = load_component(AutoencoderKLTemporalDecoder, svd, subfolder="vae", what="the SVD's VAE", kind="svd")
    vae = vae.float().eval()
    return torch.stack([reconstruct(vae, c["pixel_values"]) for c in clips])


def write_videos(folder: Path, keys: list[str], videos: torch.Tensor, fps: float = 7.0) -> None:
    """``<folder>/<key>.mp4`` for each video ``(T, 3, H, W)`` in [0, 1] (the files ``interdyn evaluate``
    reads)."""
    from interdyn.data.video import encode_video
    from interdyn.world.report import uint8_frames

    for key, video in zip(keys, videos, strict=True):
        write_atomic(folder / f"{key}.mp4", encode_video(uint8_frames(video), fps=fps))


def score(folder: Path, args: argparse.Namespace, title: str, window: int) -> dict[str, Any]:
    """``interdyn evaluate`` of ``folder``'s videos against the long clips, per window (its output in
    ``<folder>/evaluation``, its terminal lines in ``evaluate.log`` there)."""
    from interdyn.commands.evaluate import evaluate
    from interdyn.data.clip_spec import PAPER_CLIP

    clip = PAPER_CLIP.with_overrides(
        num_frames=args.num_frames, height=args.size, width=args.size, crop="center", window="start"
    )
    metrics = ["physics", "fvd"] if args.fvd else ["physics"]
    out = folder / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "evaluate.log", "w") as log, contextlib.redirect_stdout(log):
        return evaluate(
            str(folder), args.shards, metrics, str(out), title, clip, device="cpu",
            model_window=window, window_overlap=args.overlap,
        )  # fmt: skip


def build_parser() -> ScriptParser:
    """The command line of ``python -m interdyn.world.demo_long``."""
    parser = ScriptParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo_long"))
    parser.add_argument("--shards", default=LONG_SHARDS, help="the long clips (the preparer's `long` split)")
    parser.add_argument("--clips", type=int, default=4, help="how many long clips (the first ones)")
    parser.add_argument("--num_frames", type=int, default=38, help="frames per long video")
    parser.add_argument("--size", type=int, default=64, help="frame size (square)")
    parser.add_argument("--svd", default="weights/world/svd")
    parser.add_argument("--branch", default="weights/world/branch", help="the branch of single/chain/hold")
    parser.add_argument(
        "--context_branch",
        default=None,
        help=f"a context branch: adds its row (default: {CONTEXT_BRANCH} when it exists; none: no such row)",
    )
    parser.add_argument("--conditioning_channels", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--steps", type=int, default=8, help="sampler steps")
    parser.add_argument("--overlap", type=int, default=4, help="frames shared by consecutive windows")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fvd", action="store_true", help="also FVD on the 14-frame windows (I3D on CPU)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command("python -m interdyn.world.demo_long", build_parser(), _run, argv)


def row_settings(row: Row, args: argparse.Namespace, keys: list[str]) -> dict[str, Any]:
    """What a row's videos depend on: a row folder made with the same is reused."""
    return {
        "title": row.title,
        "branch": row.branch,
        "overrides": row.overrides,
        "svd": args.svd,
        "keys": keys,
        "num_frames": args.num_frames,
        "steps": args.steps,
        "overlap": args.overlap,
        "seed": args.seed,
    }


def reused(folder: Path, settings: dict[str, Any]) -> tuple[torch.Tensor, float] | None:
    """A row's videos ``(B, T, 3, H, W)`` in [0, 1] and sampling time from an earlier run in ``folder``
    with the same ``settings`` (None when there is none)."""
    from interdyn.data.video import decode_frames

    made = folder / "row.json"
    if not made.exists() or json.loads(made.read_text())["settings"] != json.loads(json.dumps(settings)):
        return None
    files = [folder / f"{key}.mp4" for key in settings["keys"]]
    if not all(f.exists() for f in files):
        return None
    videos = [
        torch.from_numpy(decode_frames(f.read_bytes())).permute(0, 3, 1, 2).float() / 255 for f in files
    ]
    return torch.stack(videos), float(json.loads(made.read_text())["seconds"])


def make_rows(
    table_rows: list[Row], args: argparse.Namespace, clips: list[dict[str, Any]], times: PhaseTimes
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Every row's videos (sampled, or reused from an earlier run with the same settings) and sampling
    time, by title; each sampled row's videos are written at once (``<out>/<row>/<key>.mp4``)."""
    from interdyn.world.report import world_module

    keys = [c["key"] for c in clips]
    videos: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    modules: dict[str | None, torch.nn.Module] = {}
    for row in table_rows:
        folder, settings = args.out / row.name, row_settings(row, args, keys)
        earlier = reused(folder, settings)
        if earlier is not None:
            print(f"demo-long: {row.title}: the videos of an earlier run with the same settings ({folder})")
            videos[row.title], seconds[row.title] = earlier
            continue
        if row.branch not in modules:
            with times.phase("loading the models"):
                modules[row.branch] = world_module(args.svd, row.branch, tuple(args.conditioning_channels))
        started = time.perf_counter()
        print(f"demo-long: sampling {len(clips)} clips: {row.title}", flush=True)
        videos[row.title] = sample_row(modules[row.branch], clips, row, args.steps, args.overlap, args.seed)
        seconds[row.title] = time.perf_counter() - started
        times.add(f"sampling: {row.name}", seconds[row.title])
        write_videos(folder, keys, videos[row.title])
        row_file = json.dumps({"settings": settings, "seconds": seconds[row.title]}, indent=2)
        write_atomic(folder / "row.json", row_file)
    return videos, seconds


def _run(args: argparse.Namespace) -> None:
    from interdyn.models.long import plan_windows
    from interdyn.world.long_report import long_pictures, long_table
    from interdyn.world.report import uint8_frames

    times = PhaseTimes("make demo-long")
    with times.phase("reading the long clips"):
        clips = load_clips(args.shards, args.clips, args.num_frames, args.size)
    context = args.context_branch
    if context is None and (Path(CONTEXT_BRANCH) / "config.json").exists():
        context = CONTEXT_BRANCH
    table_rows = rows(args.branch, None if context == "none" else context)
    videos, seconds = make_rows(table_rows, args, clips, times)
    with times.phase("the truth through the VAE"):
        videos[TRUTH_ROW] = truth_through_vae(args.svd, clips)
        write_videos(args.out / "truth", [c["key"] for c in clips], videos[TRUTH_ROW])
    window = model_window(args.svd)
    names = {row.title: row.name for row in table_rows} | {TRUTH_ROW: "truth"}
    with times.phase("scoring (interdyn evaluate)", runs=len(videos)):
        results = {title: score(args.out / names[title], args, title, window) for title in videos}
    spans = [(w.start, w.stop) for w in plan_windows(args.num_frames, window, args.overlap)]
    text = long_table(results, spans, seconds)
    truth_seam = results[TRUTH_ROW].get("seam_score_truth")
    note = f"\nSeam score of the ground truth itself: {truth_seam:.2f}.\n" if truth_seam is not None else ""
    write_atomic(args.out / "table.md", text + note)
    payload = {"windows": spans, "rows": results, "sampling_seconds": seconds}
    write_atomic(args.out / "results.json", json.dumps(payload, indent=2, default=float))
    with times.phase("pictures"):
        first = clips[0]
        long_pictures(
            args.out,
            uint8_frames((first["control"] + 1) / 2),
            {title: uint8_frames(batch[0]) for title, batch in videos.items()},
            uint8_frames((first["pixel_values"] + 1) / 2),
        )
    print("\n" + text + note)
    print(f"written: {args.out}/table.md, long_contact_sheet.png, long_side_by_side.mp4, <row>/evaluation/")
    print("\n" + times.table())


def model_window(svd: str) -> int:
    """The frames of the SVD's window: its UNet config's ``num_frames``."""
    return int(json.loads((Path(svd) / "unet" / "config.json").read_text())["num_frames"])


if __name__ == "__main__":
    sys.exit(main())

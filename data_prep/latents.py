"""Cached conditioning: run the frozen VAE and CLIP once per sample and store the results in the shards.

    python -m data_prep.latents --config configs/ssv2.yaml                  # the config's train shards
    python -m data_prep.latents --config configs/tiny_shards.yaml --device cpu --shards 'data/shards/x/*.tar'
    make latents CONFIG=configs/ssv2.yaml

Each sample gets a ``cond.npz`` field (see :mod:`interdyn.data.cache`) for one fixed window (``center``
by default) and crop (the config's training crop; ``random`` becomes ``center``). Training with
``data.init_args.cached_conditioning: true`` then skips video decoding and both encoders; the price
is that every epoch sees the same window and crop of each video.

A config that trains the Wan2.2 TI2V backbone (``model.class_path: ...InterDynWanModule``, e.g.
``configs/wan_ssv2.yaml``) caches that backbone's VAE latents instead (``--wan`` or the config's
``model.init_args.wan``; only the VAE is loaded, in float32), for its clip of ``1 + 4k`` frames.

Shards are rewritten whole (a temporary file, then a rename), in place unless ``--out`` is given, so a
killed run never leaves a broken shard. A rerun skips the shards already done with the same settings
(``_latents/<shard>.json``) and refuses other settings unless ``--overwrite``.

Parts: like the shard preparers, ``--part i/n`` (or torchrun's ``RANK``/``WORLD_SIZE``, srun, a SLURM job
array; see :mod:`data_prep.parts`) caches only shards ``i, i + n, ...`` of the sorted shard list, on the
GPU ``LOCAL_RANK`` names. A shard's cache depends only on that shard, so n parts write the same bytes as
one process. The last part to find every shard cached (or ``--finalize``) writes ``latents.json`` (the
settings and the counts per shard) next to the shards; ``--finalize`` names the shards not cached yet
(the records: :mod:`data_prep.latent_records`).

At the end the run prints its time by phase (:class:`~interdyn.utils.timing.PhaseTimes`): start-up,
planning, loading the encoders, reading shards, decoding clips, encoding (samples and samples/s),
writing shards and ``latents.json``, then the total.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from data_prep.latent_encoders import ConditioningEncoder, WanLatentEncoder
from data_prep.latent_records import (
    PROGRESS_DIR,
    Job,
    MissingCacheError,
    finalize,
    record_done,
    shard_jobs,
    shard_state,
    to_do,
    write_reports,
)
from data_prep.parts import part_device, resolve_part
from data_prep.shard_writer import write_shard
from interdyn.commands.config import read_config
from interdyn.commands.generate_wan import WAN_RULES
from interdyn.commands.parsers import add_settings_options, given_settings
from interdyn.commands.spelling import ScriptParser
from interdyn.data.cache import FIELD, FORMAT_VERSION
from interdyn.data.clip_spec import ClipSpec
from interdyn.data.sampling import key_seed
from interdyn.data.shard_format import SkipSample
from interdyn.data.shards import ClipDecoder, expand_urls
from interdyn.errors import InterDynError
from interdyn.models.sampling import DEFAULT_SAMPLING
from interdyn.models.wan.components import WAN_TI2V_REPO
from interdyn.training.settings import DTYPES
from interdyn.utils.timing import PhaseTimes, command_start, per_second

__all__ = [
    "PROGRESS_DIR",
    "ConditioningEncoder",
    "MissingCacheError",
    "WanLatentEncoder",
    "cache_shard",
    "main",
    "run",
]
# The Lightning module of the Wan backbone, as a config names it.
WAN_MODULE = "interdyn.training.wan_module.InterDynWanModule"
_DRIVER_KEYS = ("require_driver_in_first_frame", "require_driver_in_clip", "min_driver_pixels")
# The data settings a cache depends on besides the clip, and their defaults.
_DRIVER_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(ClipDecoder) if f.name in _DRIVER_KEYS
}


def read_configs(paths: list[Path]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The settings of LightningCLI configs as ``interdyn fit`` reads them (overlays in order, defaults
    filled in; :func:`interdyn.commands.config.read_config`) -> ``(backbone, model arguments, data
    init_args)``: ``"wan"`` for a config that names the Wan module, else ``"svd"``; empty without configs."""
    if not paths:
        return "svd", {}, {}
    config = read_config(paths)
    data = config.get("data") or {}
    model = config.get("model") or {}
    backbone = "svd"
    if "class_path" in model:
        if model["class_path"] != WAN_MODULE:
            raise ValueError(
                f"the latent cache is for interdyn's SVD and Wan modules; the configs {[str(p) for p in paths]} "
                f"train {model['class_path']}, which does not read it"
            )
        backbone, model = "wan", model.get("init_args") or {}
    return backbone, model, data.get("init_args", data)


def resolve_settings(args: argparse.Namespace) -> tuple[dict[str, Any], Any, list[str]]:
    """The cache settings (the configs' clip, overridden by the clip flags; the window is a flag of its
    own, the config's is for evaluation clips), the SVD (or Wan) source and shards."""
    backbone, model, data = read_configs(args.config or [])
    clip = ClipSpec.from_mapping(data.get("clip") or {}).with_overrides(**given_settings(args, ClipSpec))
    # one fixed window and crop per video are cached
    clip = dataclasses.replace(
        clip, window=args.window, crop="center" if clip.crop == "random" else clip.crop
    )
    settings = {**clip.as_kwargs(), **{k: data.get(k, default) for k, default in _DRIVER_DEFAULTS.items()}}
    shards = args.shards or data.get(f"{args.split}_shards")
    if backbone == "wan" or args.wan is not None:
        wan = args.wan if args.wan is not None else model.get("wan", WAN_TI2V_REPO)
        return _wan_settings(args, wan, settings, clip, backbone), wan, _shard_urls(shards, args.split)
    svd = args.svd if args.svd is not None else model.get("svd")
    if svd is None:
        raise ValueError("no SVD given: pass --svd or a --config whose model section names it")
    noise_aug = (
        args.noise_aug_strength
        if args.noise_aug_strength is not None
        else (model.get("sampling") or {}).get("noise_aug_strength", DEFAULT_SAMPLING.noise_aug_strength)
    )
    settings.update(
        version=FORMAT_VERSION,
        noise_aug_strength=float(noise_aug),
        seed=args.seed,
        store_dtype=args.store_dtype,
        svd=svd if isinstance(svd, str) else json.dumps(svd, sort_keys=True),
    )
    return settings, svd, _shard_urls(shards, args.split)


def _shard_urls(shards: Any, split: str) -> list[str]:
    """The local shard files a cache is written into."""
    if not shards:
        raise ValueError(f"no shards: pass --shards or a --config with data.init_args.{split}_shards")
    urls = expand_urls(shards)
    if not urls:
        raise FileNotFoundError(f"no shards match {shards!r}")
    remote = [u for u in urls if u.startswith("pipe:") or "://" in u]
    if remote:
        raise ValueError(f"the cache is written next to local shards; {remote[0]!r} is not a local file")
    return urls


def _wan_settings(
    args: argparse.Namespace, wan: Any, settings: dict[str, Any], clip: ClipSpec, backbone: str
) -> dict[str, Any]:
    """The settings of a Wan cache of the base ``wan`` (``backbone: wan``); SVD's options and a clip the Wan
    VAE cannot take are one sentence."""
    if backbone != "wan":
        raise ValueError("--wan caches the Wan backbone's latents: give it with a --config that trains it")
    given = [
        f"--{name}"
        for name in ("svd", "noise_aug_strength", "encoder_dtype", "vae_chunk_size")
        if getattr(args, name) is not None
    ]
    if given:
        raise ValueError(
            f"{given[0]} is for SVD's cache; a Wan config caches its VAE's latents (in float32, no noise)"
        )
    WAN_RULES.check(clip.num_frames, clip.height, clip.width, where="the data's clip")
    return {
        **settings,
        "version": FORMAT_VERSION,
        "backbone": "wan",  # no seed: no noise is drawn, and the window and crop are fixed
        "store_dtype": args.store_dtype,
        "wan": wan if isinstance(wan, str) else json.dumps(wan, sort_keys=True),
    }


def _read_samples(path: Path) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """A tar's samples in order: ``(key, [(field, bytes), ...])`` (WebDataset's key.field naming)."""
    samples: list[tuple[str, list[tuple[str, bytes]]]] = []
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            directory, _, base = member.name.rpartition("/")
            stem, dot, field = base.partition(".")
            key = f"{directory}/{stem}" if directory else stem
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if not samples or samples[-1][0] != key:
                samples.append((key, []))
            samples[-1][1].append((field if dot else "", data))
    return samples


# the phases of a shard's caching, in the time table
READING, DECODING = "reading shards", "decoding clips"
ENCODING, WRITING = "encoding (VAE, CLIP)", "writing shards"


def cache_shard(
    src: Path,
    dst: Path,
    decoder: ClipDecoder,
    encoder: ConditioningEncoder | WanLatentEncoder,
    settings: dict[str, Any],
    batch_size: int,
    progress: Any = None,
    times: PhaseTimes | None = None,
) -> Counter:
    """Add ``cond.npz`` to every usable sample of ``src`` and write the shard to ``dst`` atomically.
    Returns counts: ``cached`` and one entry per skip reason. ``times`` gets the seconds spent reading,
    decoding, encoding and writing."""
    times = times if times is not None else PhaseTimes(f"latents {src.name}")
    with times.phase(READING, runs=0):
        samples = _read_samples(src)
    counts: Counter = Counter()
    cached: dict[str, bytes] = {}
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        with times.phase(ENCODING, runs=0):
            encoded = encoder(pending, settings.get("seed", 0))
        with times.phase(WRITING, runs=0):
            for clip, result in zip(pending, encoded, strict=True):
                cached[clip["key"]] = encoder.pack(clip, result, settings)
                counts["cached"] += 1
        pending.clear()

    for key, fields in samples:
        sample = {"__key__": key, **{f: d for f, d in fields if f != FIELD}}
        try:
            with times.phase(DECODING, runs=0):
                pending.append(decoder(sample, random.Random(key_seed(settings.get("seed", 0), key))))
        except SkipSample as skip:
            counts[skip.reason] += 1
        if len(pending) >= batch_size:
            flush()
        if progress is not None:
            progress.update(1)
    if pending:
        flush()
    with times.phase(WRITING, runs=0):
        out = []
        for key, fields in samples:
            encoded = {f: d for f, d in fields if f != FIELD}
            if key in cached:
                encoded[FIELD] = cached[key]
            out.append((key, encoded))
        write_shard(dst, out)
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ScriptParser(
        prog="python -m data_prep.latents",
        description="Store VAE latents, the first-frame latent and CLIP embedding (SVD; a Wan config: the Wan VAE's "
        "latents) as a cond.npz field of each shard sample.",
    )
    parser.add_argument(
        "--config", type=Path, action="append", help="LightningCLI config(s) to read settings from"
    )
    parser.add_argument(
        "--split", default="train", help="which <split>_shards of the config (default: train)"
    )
    parser.add_argument("--shards", nargs="+", help="shard globs / brace patterns (instead of the config's)")
    parser.add_argument("--out", type=Path, help="write the cached shards here (default: in place)")
    parser.add_argument("--svd", help="SVD folder, hub id or preset (default: the config's model.svd)")
    parser.add_argument(
        "--wan",
        help="with a Wan config: Wan2.2 TI2V folder, hub id or preset (default: the config's model wan)",
    )
    add_settings_options(parser, ClipSpec, "the config's, else {}", skip=["window"])
    parser.add_argument(
        "--window", choices=("center", "start"), default="center", help="which clip of each video"
    )
    parser.add_argument("--noise_aug_strength", dest="noise_aug_strength", type=float)
    parser.add_argument("--seed", type=int, default=0, help="seeds the image-latent noise per sample key")
    parser.add_argument(
        "--device", help="default: cuda:LOCAL_RANK under torchrun/srun, else cuda if available, else cpu"
    )
    parser.add_argument(
        "--encoder_dtype",
        choices=sorted(DTYPES),
        help="VAE/CLIP dtype (default: bfloat16 on CUDA, float32 on CPU)",
    )
    parser.add_argument("--store_dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--batch_size", type=int, default=8, help="clips per encoder call")
    parser.add_argument("--vae_chunk_size", type=int, help="frames per VAE call (SVD's cache; default 16)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild caches made with other settings")
    parser.add_argument("--no_progress", action="store_true")
    parser.add_argument(
        "--part",
        metavar="I/N",
        help="cache only part I of N of the shards (default: from torchrun/srun/SLURM array variables, else all)",
    )
    parser.add_argument(
        "--finalize",
        action="store_true",
        help="cache nothing: write latents.json once every shard is cached (else name the missing ones)",
    )
    return parser.parse_args(argv)


def _cache_shards(
    todo: list[Job],
    settings: dict[str, Any],
    svd: Any,
    device: str,
    args: argparse.Namespace,
    times: PhaseTimes,
) -> Counter:
    """Cache every shard of ``todo`` on ``device``, recording each one done; returns the counts."""
    fingerprint = json.dumps(settings, sort_keys=True)
    dtype_name = args.encoder_dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
    encoder: ConditioningEncoder | WanLatentEncoder
    with times.phase("loading the encoders"):
        if settings.get("backbone") == "wan":
            encoder = WanLatentEncoder(svd, device)
        else:
            encoder = ConditioningEncoder(
                svd, device, DTYPES[dtype_name], settings["noise_aug_strength"], args.vae_chunk_size or 16
            )
    decoder = ClipDecoder(
        ClipSpec.from_mapping({k: settings[k] for k in ClipSpec.names()}),
        **{k: settings[k] for k in _DRIVER_KEYS},
    )
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(desc="caching", unit="video")
    total: Counter = Counter()
    shards = 0
    try:
        for src, dst, record in todo:
            dst.parent.mkdir(parents=True, exist_ok=True)
            counts = cache_shard(src, dst, decoder, encoder, settings, args.batch_size, progress, times)
            total.update(counts)
            with times.phase(WRITING, runs=0):
                record_done(dst, record, fingerprint, counts)
            shards += 1
    finally:
        if progress is not None:
            progress.close()
        _note_work(times, total, shards)
    return total


def _note_work(times: PhaseTimes, total: Counter, shards: int) -> None:
    """What the reading, decoding and encoding phases did: shards, videos, samples and samples/s."""
    if READING in times.seconds:
        times.details[READING] = f"{shards} shard{'' if shards == 1 else 's'}"
    if DECODING in times.seconds:
        times.details[DECODING] = f"{sum(total.values())} videos"
    if ENCODING in times.seconds:
        times.details[ENCODING] = per_second(total.get("cached", 0), "samples", times.seconds[ENCODING])


def run(args: argparse.Namespace, times: PhaseTimes | None = None) -> dict[str, Any]:
    """Cache every shard; returns a summary (settings, shard counts, samples cached and skipped).
    ``times`` gets the phases (see the module docstring)."""
    times = times if times is not None else PhaseTimes("data_prep.latents")
    with times.phase("planning (settings, shard list)"):
        part = resolve_part(args.part)
        if not part.whole:
            times.command = f"data_prep.latents part {part}"
        settings, svd, urls = resolve_settings(args)
        fingerprint = json.dumps(settings, sort_keys=True)
        jobs = shard_jobs(urls, args.out)
        mine = [jobs[j] for j in part.chunks(len(jobs))]
        todo = [] if args.finalize else to_do(mine, fingerprint, args.overwrite)
    if args.finalize:
        with times.phase("latents.json"):
            finalize(jobs, settings, fingerprint)
        return {"settings": settings, "shards": len(urls), "cached_now": 0, "counts": {}}
    shown = {k: v for k, v in settings.items() if k not in ("svd", "wan", "version")}
    model = "Wan" if settings.get("backbone") == "wan" else "SVD"
    svd_name = svd if isinstance(svd, str) else f"the config's random {model}"
    which = "" if part.whole else f" (part {part} from {part.source}: {len(mine)} of them)"
    print(
        f"latents: {len(urls)} shards{which}, {len(mine) - len(todo)} already cached, with {svd_name}; {shown}"
    )
    total: Counter = Counter()
    started = time.monotonic()
    if todo:
        device = part_device(part, args.device) or ("cuda" if torch.cuda.is_available() else "cpu")
        total = _cache_shards(todo, settings, svd, device, args, times)
    seconds = time.monotonic() - started
    skipped = {k: v for k, v in total.items() if k != "cached"}
    videos = sum(total.values())
    print(
        f"latents{'' if part.whole else f' part {part}'}: cached {total.get('cached', 0)} samples in"
        f" {len(todo)} shards, {videos} videos in {seconds:.1f} s ({videos / max(seconds, 1e-9):.2f} videos/s)"
        + (f"; skipped {skipped}" if skipped else ""),
        flush=True,
    )
    with times.phase("latents.json"):
        # the last part to finish (or the only one) writes latents.json
        waiting = [job[1].name for job in jobs if shard_state(*job, fingerprint) != "done"]
        if not waiting:
            write_reports(jobs, settings)
    if waiting:
        print(
            f"latents: {len(waiting)} shard(s) of other parts are not cached yet; the last part to finish"
            " writes latents.json (or run the same command with --finalize)"
        )
    return {"settings": settings, "shards": len(urls), "cached_now": len(todo), "counts": dict(total)}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 with one sentence for user errors). A run that
    got to work ends with its time by phase, an interrupted one too."""
    times = PhaseTimes("data_prep.latents", started=command_start(argv is None))
    args = parse_args(argv)
    times.add("start-up (imports, arguments)", times.total())
    try:
        run(args, times)
    except (InterDynError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; run the same command again to go on", file=sys.stderr)
        times.show()
        return 130
    times.show()
    return 0


if __name__ == "__main__":
    sys.exit(main())

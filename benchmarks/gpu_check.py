"""Everything a CUDA machine has to measure, in one command, written into docs/benchmarks.md.

    make gpu-check / gpu-check-wan                  # installs, then the SVD items (<= 8 min) / Wan2.2's (<= 5)
    python benchmarks/gpu_check.py --dry_run        # no GPU: every code path on the tiny model, on CPU
    python benchmarks/gpu_check.py --only sample:compile   # the optional item (minutes of compiling)

Items, each in its own process (clean peak memory) under a hard timeout, in this order (most valuable
first; the limits, :data:`LIMITS`, of each backbone's items fit its budget, so that each group is one
command of at most 10 minutes); a finished item's rows are written
at once, so partial results survive a timeout, a crash or an interrupted run:

- a real one-GPU ``interdyn fit`` + ``interdyn test`` with configs/ssv2.yaml's recipe on the tiny model
  (benchmarks/gpu_smoke.py);
- the same as 2 processes with configs/ssv2.yaml's DDP strategy (NCCL), when two GPUs are present;
- training step time and peak memory, full-size SVD architecture with random weights, 14 frames at
  256x384, batch 4, for ``recommended`` (configs/ssv2.yaml), ``24gb`` (configs/ssv2_24gb.yaml),
  ``recommended+cache`` and ``plain``; then, with the allocator capped at the recipe's memory budget,
  the largest micro-batch whose step fits;
- one 50-step guided sample at 256x384 (Euler); with ``torch.compile`` only when asked for;
- Wan2.2 TI2V-5B (benchmarks/wan_step.py, full-size architecture with random weights, configs/wan_ssv2.yaml's
  clip of 49 frames at 256x384): the training step of configs/wan_ssv2.yaml's recipe (per GPU) and of configs/wan_48gb.yaml's
  with the allocator capped at a 48 GB card, and one 50-step video with the branch.

The dry run uses the tiny models at 64x64 (Wan: 5 frames) in float32 with one step per item, ``aot_eager`` instead of
inductor for the compiled sample, gloo instead of NCCL, and writes to a scratch copy of the page
(``--docs``), never to the CUDA rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from report import DOCS, machine, write_section  # noqa: E402
from train_recipes import CUDA_CONTEXT_GIB, RECIPES  # noqa: E402
from wan_recipes import CARD_GIB, WAN_GPU_RECIPES, WAN_RECIPES  # noqa: E402

GIB_PER_GB = 1e9 / 2**30
# The memory each recipe must fit in: plain the paper's 80 GB H100, recommended 40 GB (its target),
# 24gb a 24 GB card less ~2 GiB for the CUDA context and other processes.
BUDGET_GIB = {
    "plain": 80 * GIB_PER_GB,
    "recommended": 40 * GIB_PER_GB,
    "recommended+cache": 40 * GIB_PER_GB,
    "24gb": 22.0,
}
TRAIN_ORDER = ["recommended", "24gb", "recommended+cache", "plain"]  # by value, as they run


@dataclass
class Item:
    """One measurement: a command, its hard timeout, and what it printed (JSON lines) once it ended."""

    name: str
    section: str
    cmd: list[str]
    timeout: float
    status: str = "not run"
    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""


def run_item(item: Item, timeout: float, env: dict[str, str]) -> None:
    """Run ``item`` in its own process group; on timeout the whole group (DDP workers included) is
    killed and whatever it had printed is kept."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        item.cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
        item.status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        item.status = "timed out"
    item.seconds = time.perf_counter() - start
    for line in out.splitlines():
        if line.startswith("{"):
            try:
                item.records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    if item.status == "failed":
        tail = [line for line in err.strip().splitlines() if line.strip()][-1:] or [
            f"exit code {proc.returncode}"
        ]
        item.error = tail[0][:160].replace("|", "/")


# Hard limits in seconds on CUDA (CPU dry run), in the order the items run: the paper recipe's real runs
# first, then the figures the recipes' claims rest on, the optional compiled sample last. Each backbone's
# items' CUDA limits add up to less than its budget (tests/benchmarks/test_gpu_check.py checks it).
DEFAULT_BUDGET_S = 480.0
WAN_BUDGET_S = 300.0
WAN_ITEMS = {"wan:2x80gb", "wan:48gb", "wan:sample"}
PROBE_S = 15.0  # the CUDA probe (one interpreter start with torch) before the first item
LIMITS: dict[str, tuple[float, float]] = {
    "smoke": (110, 400),
    "ddp": (110, 900),
    "train:recommended": (55, 150),
    "train:24gb": (55, 150),
    "sample": (45, 90),
    "train:recommended+cache": (40, 150),
    "train:plain": (40, 150),
    "wan:2x80gb": (80, 300),
    "wan:48gb": (80, 300),
    "wan:sample": (70, 200),
    "sample:compile": (200, 300),
}
# run only when named with --only (inductor compiling the full UNet alone takes minutes)
OPTIONAL = {"sample:compile"}


def build_items(args: argparse.Namespace, python: str, gpus: int) -> list[Item]:
    """The measurements, most important first (the overall budget may stop the list early): the ones of
    :data:`LIMITS`, without ``ddp`` when fewer than two GPUs are visible (the dry run has two CPU processes)."""
    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    commands: dict[str, tuple[str, list[str]]] = {}
    smoke = [python, str(HERE / "gpu_smoke.py"), "--device", device]
    commands["smoke"] = ("ddp", [*smoke, "--scratch", str(Path(args.scratch) / "smoke")])
    if dry or gpus >= 2:
        commands["ddp"] = ("ddp", [*smoke, "--devices", "2", "--scratch", str(Path(args.scratch) / "ddp")])
    for recipe in TRAIN_ORDER:
        commands[f"train:{recipe}"] = ("train", train_command(recipe, dry, python, device))
    sample = [python, str(HERE / "sample.py"), "--device", device, "--no_write",
              "--steps", "2" if dry else "50", "--schedulers", "euler", "--repeats", "1"]  # fmt: skip
    if dry:
        sample += ["--preset", "tiny", "--frames", "2", "--height", "64", "--width", "64"]
    commands["sample"] = ("sample", sample)
    backend = ["--compile_backend", "aot_eager"] if dry else []
    commands["sample:compile"] = ("sample", [*sample, "--compile", *backend])
    wan = [python, str(HERE / "wan_step.py"), "--device", device]
    wan += ["--tiny", "--steps", "1", "--warmup", "0", "--accumulate", "2"] if dry else []
    for recipe in WAN_GPU_RECIPES:
        commands[f"wan:{recipe}"] = (
            "wan",
            [*wan, "--recipe", recipe, "--budget_gib", f"{wan_budget(recipe):.1f}"],
        )
    commands["wan:sample"] = ("wan", [*wan, "--sample", "2" if dry else "50"])
    return [
        Item(name, section, cmd, LIMITS[name][1 if dry else 0])
        for name in LIMITS
        if name in commands
        for section, cmd in [commands[name]]
    ]


def train_command(recipe: str, dry: bool, python: str, device: str) -> list[str]:
    """One recipe's timed steps and largest-batch search (full size on CUDA, the tiny model in fp32 dry)."""
    size = ["--frames", "2", "--height", "64", "--width", "64"] if dry else ["--frames", "14", "--height", "256", "--width", "384"]  # fmt: skip
    cmd = [python, str(HERE / "train_step.py"), "--one", recipe, "--device", device, "--preset", "tiny" if dry else "svd",
           "--batch", "1" if dry else "4", *size, "--steps", "1" if dry else "3", "--warmup", "0" if dry else "1",
           "--budget_gib", f"{BUDGET_GIB[recipe]:.2f}", "--max_batch", "2" if dry else "8"]  # fmt: skip
    return cmd + (["--fp32"] if dry else [])


def wan_budget(recipe: str) -> float:
    """The allocator cap of a Wan recipe: its card's memory less the CUDA context."""
    return CARD_GIB[WAN_RECIPES[recipe]["card"]] - CUDA_CONTEXT_GIB


def cuda_devices(python: str) -> int:
    """GPUs visible to ``python`` (0 when torch cannot see CUDA)."""
    probe = subprocess.run(
        [python, "-c", "import torch; print(torch.cuda.device_count())"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return int(probe.stdout.strip() or 0) if probe.returncode == 0 else 0


# --------------------------------------------------------------------------- the page
def status_cell(item: Item) -> str:
    if item.status == "failed":
        return f"failed: {item.error}"
    if item.status == "timed out":
        return f"timed out after {item.seconds:.0f} s"
    return item.status


def train_section(items: list[Item], header: list[str]) -> str:
    lines = [
        *header,
        "- Full-size SVD architecture, random weights, 14 frames at 256x384; one optimizer step = `accumulate`"
        " micro-batches; 1 warm-up and 3 timed steps. Peak: `torch.cuda.max_memory_allocated` (reserved:"
        " what the caching allocator held, i.e. with its slack). Largest batch: the largest micro-batch whose"
        " step runs with the allocator capped at the budget (`torch.cuda.set_per_process_memory_fraction`).",
        "",
        "| recipe | batch x accumulate | s/step | samples/s | peak GiB | reserved GiB | budget GiB | largest batch in budget |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for item in items:
        recipe = item.name.split(":", 1)[1]
        timed = next((r for r in item.records if "seconds_per_step" in r), None)
        if timed is None:
            lines.append(f"| {recipe} | {status_cell(item)} | | | | | {BUDGET_GIB[recipe]:.1f} | |")
            continue
        fits = [r["fits"] for r in item.records if "fits" in r]
        final = next((r for r in reversed(item.records) if "largest_batch" in r), None)
        largest = (
            str(final["largest_batch"])
            if final
            else (f">= {fits[-1]} ({status_cell(item)})" if fits else status_cell(item))
        )
        reserved = f"{timed['reserved_gib']:.1f}" if "reserved_gib" in timed else "-"
        wanted = RECIPES[recipe].get("optimizer", "adam")
        label = recipe
        if timed.get("optimizer", wanted) != wanted:  # e.g. bitsandbytes missing: Adam's state is larger
            label = f"{recipe} (with {timed['optimizer']}, not {wanted})"
        lines.append(
            f"| {label} | {timed['batch']} x {timed['accumulate']} | {timed['seconds_per_step']:.3f} |"
            f" {timed['samples_per_second']:.2f} | {timed['peak_gib']:.1f} | {reserved} | {BUDGET_GIB[recipe]:.1f} | {largest} |"
        )
    return "\n".join(lines)


def sample_section(items: list[Item], header: list[str]) -> str:
    lines = [
        *header,
        "- One guided video (guidance 1 -> 3), full-size architecture with random weights, bf16, 14 frames at"
        " 256x384, Euler; seconds for the whole call (VAE/CLIP encode, the steps, VAE decode) after one"
        " warm-up call (which includes compilation).",
        "",
        "| sampler | steps | compile | seconds per video | warm-up s | peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    for item in items:
        compiled = "yes" if item.name.endswith("compile") else "no"
        rows = [r for r in item.records if "seconds" in r]
        if not rows:
            lines.append(f"| euler | | {compiled} | {status_cell(item)} | | |")
        for r in rows:
            peak = "-" if r["peak_gib"] != r["peak_gib"] else f"{r['peak_gib']:.1f}"  # NaN: no CUDA
            lines.append(
                f"| {r['scheduler']} | {r['steps']} | {compiled} | {r['seconds']:.2f} | {r['warmup_seconds']:.1f} | {peak} |"
            )
    return "\n".join(lines)


def wan_section(items: list[Item], header: list[str]) -> str:
    """The Wan rows: each recipe's step per GPU (with the allocator capped at its card) and one video."""
    lines = [
        *header,
        "- Wan2.2 TI2V-5B (benchmarks/wan_step.py): full-size architecture with random weights, the default"
        " branch, configs/wan_ssv2.yaml's clip (49 frames at 256x384); a step = `accumulate` micro-batches"
        " (the VAE encoding each), bf16 autocast, clipping, Adam (configs/wan_48gb.yaml: its moments in host"
        " memory); 1 warm-up and 2 timed steps;"
        " the allocator capped at the recipe's card less the CUDA context (the analysis:"
        ' "Wan2.2 TI2V-5B: memory and FLOPs per training step").',
        "",
        "| recipe | clips x accumulate | s/step | clips/s | peak GiB | reserved GiB | cap GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for item in items:
        name = item.name.split(":", 1)[1]
        if name == "sample":
            continue
        r = next((r for r in item.records if "wan_recipe" in r), None)
        if r is None or r.get("out_of_memory"):
            status = "out of memory" if r else status_cell(item)
            lines.append(f"| {name} | {status} | | | | | {wan_budget(name):.1f} |")
            continue
        reserved = f"{r['reserved_gib']:.1f}" if "reserved_gib" in r else "-"
        lines.append(
            f"| {name} | {r['batch']} x {r['accumulate']} | {r['seconds_per_step']:.2f} | {r['clips_per_second']:.2f} |"
            f" {r['peak_gib']:.1f} | {reserved} | {wan_budget(name):.1f} |"
        )
    for item in (i for i in items if i.name == "wan:sample"):
        r = next((r for r in item.records if "wan_sample" in r), None)
        done = (
            f"{r['wan_sample']} steps: {r['seconds']:.1f} s per video, peak {r['peak_gib']:.1f} GiB"
            if r
            else status_cell(item)
        )
        lines += ["", f"One video with the branch (UniPC, VAE decode included, after a warm-up): {done}."]
    return "\n".join(lines)


def ddp_section(items: list[Item], header: list[str], gpus: int) -> str:
    """The real runs of configs/ssv2.yaml's recipe: one GPU, then two processes with its DDP strategy."""
    lines = [*header, ""]
    what = {
        "smoke": "One-GPU `interdyn fit`",
        "ddp": "2-process DDP (NCCL; gloo in the dry run) `interdyn fit`",
    }
    for item in items:
        done = next((r for r in item.records if "smoke" in r), None)
        times = (
            f"fit {done['fit_seconds']:.0f} s, test {done['test_seconds']:.0f} s, strategy {done['strategy']}"
            if done
            else f"{item.seconds:.0f} s wall"
        )
        lines.append(
            f"{what[item.name]} (4 steps, bf16-mixed, validation, checkpoints) + `interdyn test` with"
            f" configs/ssv2.yaml's recipe on the tiny model, from shards (benchmarks/gpu_smoke.py):"
            f" {status_cell(item)} ({times}).\n"
        )
    if not any(i.name == "ddp" for i in items):
        lines.append(f"2-process DDP run not made: {gpus} GPU(s) visible, it needs two.")
    return "\n".join(lines)


def write_page(items: list[Item], args: argparse.Namespace, docs: Path, gpus: int) -> None:
    """Rewrite the sections whose items have run (each write atomic)."""
    today = time.strftime("%Y-%m-%d")
    where = (
        "CPU dry run: tiny models at 64x64 (SVD 2 frames, Wan 5), float32, one step per item (the notes below"
        " describe the CUDA run)"
        if args.dry_run
        else machine("cuda")
    )
    titles = {
        "train": "Training step on CUDA (`make gpu-check`)",
        "sample": "Sampling on CUDA (`make gpu-check`)",
        "ddp": "Real runs and DDP on CUDA (`make gpu-check`)",
        "wan": "Wan2.2 TI2V-5B on CUDA (`make gpu-check-wan`)",
    }
    for section in ("train", "sample", "ddp", "wan"):
        mine = [i for i in items if i.section == section]
        if all(i.status == "not run" or i.status.startswith("not run (optional") for i in mine) and not (
            section == "ddp" and not args.only and getattr(args, "backbone", None) != "wan"
        ):
            continue  # nothing measured yet (the DDP section also says why it was not run)
        header = [f"## {titles[section]}, {today}", "", f"- {where}"]
        if section == "train":
            text = train_section(mine, header)
        elif section == "sample":
            text = sample_section(mine, header)
        elif section == "wan":
            text = wan_section(mine, header)
        else:
            text = ddp_section(mine, header, gpus)
        write_section(f"{section}-cuda", text, docs)


# --------------------------------------------------------------------------- driver
def select_items(items: list[Item], args: argparse.Namespace) -> list[Item] | None:
    """The items ``--only`` names (``None`` for an unknown name), else all, the optional ones not run."""
    if args.only:
        unknown = sorted(set(args.only) - {i.name for i in items})
        if unknown:
            print(f"error: unknown items {unknown}; available: {[i.name for i in items]}", file=sys.stderr)
            return None
        return [i for i in items if i.name in args.only]
    backbone = args.backbone = args.backbone or ("all" if args.dry_run else "svd")
    for item in items:
        if item.name in OPTIONAL:
            item.status = f"not run (optional: --only {item.name})"
        elif backbone != "all" and (item.name in WAN_ITEMS) != (backbone == "wan"):
            item.status = "not run (optional: the other backbone's command)"
    return items


def main(argv: list[str] | None = None) -> int:
    from interdyn.commands.spelling import ScriptParser  # old hyphenated options still work

    parser = ScriptParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry_run", action="store_true", help="CPU, tiny model, scratch page: test every code path"
    )
    parser.add_argument(
        "--budget_s",
        type=float,
        default=None,
        help=f"overall time limit, items past it are not run ({DEFAULT_BUDGET_S:.0f}; dry run 2400)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="item names, e.g. train:24gb sample ddp; sample:compile runs only when named here",
    )
    parser.add_argument(
        "--backbone",
        choices=("svd", "wan", "all"),
        default=None,
        help="which items run: SVD's (default on CUDA), Wan2.2's (make gpu-check-wan) or all (dry run default)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="one hard timeout for every item (seconds)"
    )
    parser.add_argument(
        "--docs", type=Path, help="page to write (default: docs/benchmarks.md; dry run: scratch)"
    )
    parser.add_argument(
        "--no_install", action="store_true", help="accepted for older scripts: nothing is installed any more"
    )
    args = parser.parse_args(argv)
    python = sys.executable
    gpus = 0 if args.dry_run else cuda_devices(python)
    if not args.dry_run and gpus == 0:
        print("error: no CUDA GPU visible; use --dry_run to exercise the check on CPU", file=sys.stderr)
        return 2
    scratch = tempfile.mkdtemp(prefix="gpu-check-")
    args.scratch = scratch
    docs = args.docs
    if docs is None:
        docs = Path(scratch) / "benchmarks.md" if args.dry_run else DOCS
        if args.dry_run:
            shutil.copyfile(DOCS, docs)
    items = build_items(args, python, gpus)
    items = select_items(items, args)
    if items is None:
        return 2
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    if args.dry_run:
        env.setdefault("OMP_NUM_THREADS", "1")
    # CPU dry runs get generous limits: a loaded 2-core machine runs them several times slower
    budget = WAN_BUDGET_S if args.backbone == "wan" else DEFAULT_BUDGET_S
    deadline = time.perf_counter() + (args.budget_s or (2400.0 if args.dry_run else budget))
    for item in items:
        if item.status.startswith("not run (optional"):
            continue
        left = deadline - time.perf_counter()
        if left < 10:
            item.status = "not run (out of time)"
            continue
        run_item(item, min(args.timeout or item.timeout, left), env)
        print(f"{item.name}: {status_cell(item)} in {item.seconds:.0f} s", flush=True)
        write_page(items, args, docs, gpus)
    write_page(items, args, docs, gpus)
    print(f"results: {docs}")
    shutil.rmtree(Path(scratch) / "runs", ignore_errors=True)
    return 0 if all(i.status == "ok" or i.status.startswith("not run (optional") for i in items) else 1


if __name__ == "__main__":
    sys.exit(main())

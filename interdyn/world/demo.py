"""`make demo`'s steps after the install and the world's clips: train a branch on the shipped SVD, test
three models on the same held-out clips, write the report, and print where the time went.

    python -m interdyn.world.demo --out runs/demo_eval [--started EPOCH_SECONDS] [--jobs 2]

With two or more cores the tests that do not need the new branch (the SVD without control and the
shipped branch) run beside its training, each process on its own share of the cores, so the demo takes
about as long as training plus one test; ``--jobs 1`` runs every step one after the other. The numbers do
not depend on it: every step is its own seeded ``interdyn`` command, as a user would type it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from interdyn.metrics.weights import I3D_FILENAME, cache_dir
from interdyn.utils.timing import PhaseTimes, format_seconds

CONFIG = "configs/demo.yaml"
SHIPPED_BRANCH = "weights/world/branch"
SVD = "weights/world/svd"
WORLD = "data/shards/world"


@dataclass(frozen=True)
class Step:
    """One command of the demo and the name of its line in the time table."""

    name: str
    args: tuple[str, ...]


def _interdyn(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "interdyn.commands.cli", *args)


def _test(out: Path, name: str, *model_args: str) -> Step:
    logger = "--trainer.logger.init_args."
    return Step(
        f"test: {name.replace('_', ' ')}",
        _interdyn(
            "test", "--config", CONFIG, *model_args,
            f"{logger}save_dir", str(out), f"{logger}name", name, f"{logger}version", "test",
        ),
    )  # fmt: skip


def steps(out: Path) -> dict[str, Step]:
    """The demo's commands by role, as a user would type them (see docs/world.md)."""
    resume = ("--ckpt_path", "last") if Path("runs/demo/checkpoints/last.ckpt").exists() else ()
    weights = out / "demo_branch_weights"
    report_runs = []
    for title, name in (
        ("SVD, no control", "no_control"),
        ("demo branch (make demo)", "demo_branch"),
        ("shipped branch", "shipped_branch"),
    ):
        report_runs += ["--run", f"{title}={out / name / 'test'}"]
    return {
        "fit": Step("training the demo branch", _interdyn("fit", "--config", CONFIG, *resume)),
        "export": Step(
            "export",
            _interdyn(
                "export",
                "--ckpt_path",
                "runs/demo/checkpoints/last.ckpt",
                "--out",
                str(weights),
                "--overwrite",
            ),
        ),
        "no_control": _test(out, "no_control", "--model.sampling.conditioning_scale", "0"),
        "shipped": _test(out, "shipped_branch", "--model.controlnet", SHIPPED_BRANCH),
        "demo": _test(out, "demo_branch", "--model.controlnet", str(weights)),
        "report": Step(
            "report and pictures",
            (
                sys.executable,
                "-m",
                "interdyn.world.report",
                "--out",
                str(out),
                "--steps",
                "8",
                *report_runs,
                "--branch",
                f"demo branch={weights}",
                "--branch",
                f"shipped branch={SHIPPED_BRANCH}",
                "--ceiling_clips",
                "12",
            ),
        ),  # fmt: skip
    }


def _env(threads: int | None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _start(step: Step, threads: int | None, log: Path | None) -> subprocess.Popen:
    print(f"demo: {step.name}: {' '.join(step.args[2:])}", flush=True)
    stdout = open(log, "w") if log is not None else None  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        step.args, env=_env(threads), stdout=stdout, stderr=subprocess.STDOUT if stdout else None
    )


def _finish(step: Step, proc: subprocess.Popen, started: float, times: PhaseTimes, log: Path | None) -> None:
    code = proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    times.add(step.name, time.perf_counter() - started)
    if code != 0:
        tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
        sys.stderr.write(tail)
        raise SystemExit(f"demo: `{step.name}` failed (exit code {code}){f'; its log: {log}' if log else ''}")


def run_step(step: Step, times: PhaseTimes, threads: int | None = None) -> None:
    """Run one step in the foreground, its output on the terminal."""
    started = time.perf_counter()
    _finish(step, _start(step, threads, None), started, times, None)


def run_beside(main: Step, side: list[Step], times: PhaseTimes, logs: Path, cores: int) -> None:
    """Run ``main`` (its output on the terminal) while ``side`` runs one after the other beside it (its
    output in ``logs``); the cores are shared between the two."""
    logs.mkdir(parents=True, exist_ok=True)
    side_threads = max(1, cores // 2)
    main_proc_start = time.perf_counter()
    main_proc = _start(main, max(1, cores - side_threads), None)
    try:
        for step in side:
            log = logs / f"{step.name.replace(': ', '_').replace(' ', '_')}.log"
            started = time.perf_counter()
            _finish(step, _start(step, side_threads, log), started, times, log)
            print(
                f"demo: {step.name} finished in {format_seconds(time.perf_counter() - started)} (log: {log})"
            )
    except BaseException:  # a failed side step or Ctrl-C: do not leave the main step running on its own
        main_proc.terminate()
        main_proc.wait()
        raise
    _finish(main, main_proc, main_proc_start, times, None)


def _made_since(path: Path, since: float) -> float | None:
    """The modification time of ``path`` if it was written after ``since``, else None."""
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    return mtime if mtime >= since else None


def account_make(times: PhaseTimes, started: float | None, venv: Path) -> None:
    """The install and the world's clips, done by make before this script: their time from the stamp and
    index files they left (only when they were made in this run)."""
    if started is None:
        return
    mark = started
    for name, path in (
        ("install", venv / ".installed-core-stamp"),
        ("world clips", Path(WORLD) / "test" / "index.json"),
    ):
        done = _made_since(path, mark)
        if done is not None:
            times.add(name, done - mark)
            mark = done
    times.started -= time.time() - started  # the total counts from make's start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo_eval"))
    parser.add_argument("--started", type=float, help="when `make demo` started (seconds since the epoch)")
    parser.add_argument("--venv", type=Path, default=Path(".venv"))
    parser.add_argument(
        "--jobs", type=int, default=2, help="1: every step one after the other; 2: tests beside the training"
    )
    args = parser.parse_args(argv)
    times = PhaseTimes("make demo")
    account_make(times, args.started, args.venv)
    todo = steps(args.out)
    if not (cache_dir() / I3D_FILENAME).exists():
        run_step(Step("I3D weights (FVD, KVD)", _interdyn("weights", "fetch", "i3d")), times)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if args.jobs > 1 and cores > 1:
        run_beside(todo["fit"], [todo["no_control"], todo["shipped"]], times, args.out / "logs", cores)
    else:
        for key in ("fit", "no_control", "shipped"):
            run_step(todo[key], times)
    for key in ("export", "demo", "report"):
        run_step(todo[key], times)
    print(f"\nDemo finished: {args.out}/table.md, contact_sheet.png/.mp4, counterfactual_grid.png/.mp4")
    print(
        f"  per model: {args.out}/<model>/test/ (metrics.md, counterfactual.md, videos/); tensorboard --logdir runs/"
    )
    print("\n" + times.table())
    if args.jobs > 1 and cores > 1:
        print("  (the two tests of the SVD alone and of the shipped branch ran beside the training)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

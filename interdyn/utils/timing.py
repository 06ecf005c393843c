"""Wall time by phase, printed when a long command ends, so a user sees where the time went.

`interdyn fit` / `test` (through :class:`interdyn.callbacks.PhaseTimer`), the preparers
(:mod:`data_prep.build`) and the latent cache (:mod:`data_prep.latents`) each keep a :class:`PhaseTimes`
and print its table at the end: one line per phase, its seconds and what it did (steps, clips), then
the total. A command's record counts from :func:`command_start` (the process's start when it runs as a
command, so that its imports count); :func:`per_second` writes a phase's work and rate.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class PhaseTimes:
    """Seconds spent per named phase, in the order the phases first ran.

    A phase may run several times (validation every N steps); its seconds add up and its count is kept
    (``runs=0`` for a phase timed in many small pieces, e.g. per sample, where a count says nothing).
    ``detail`` is a short note shown beside the phase (``"60 steps, 0.45 it/s"``).
    """

    command: str
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def add(self, name: str, seconds: float, detail: str | None = None, runs: int = 1) -> None:
        """Add ``seconds`` (and ``runs``) to phase ``name`` (created on first use)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, seconds)
        self.counts[name] = self.counts.get(name, 0) + runs
        if detail is not None:
            self.details[name] = detail

    @contextmanager
    def phase(self, name: str, runs: int = 1) -> Iterator[None]:
        """Time the ``with`` block as (``runs`` more runs of) phase ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start, runs=runs)

    def total(self) -> float:
        """Seconds since this record was made (phases plus whatever ran between them)."""
        return time.perf_counter() - self.started

    def table(self) -> str:
        """The phases as aligned text lines: name, seconds, runs and detail; then the total."""
        rows = []
        for name, secs in self.seconds.items():
            note = self.details.get(name, "")
            runs = self.counts[name]
            if runs > 1:
                note = f"{runs} runs" + (f", {note}" if note else "")
            rows.append((name, format_seconds(secs), note))
        accounted = sum(self.seconds.values())
        total = self.total()
        if total - accounted > 0.05 * max(total, 1e-9) and total - accounted > 1.0:
            rows.append(("other", format_seconds(total - accounted), ""))
        rows.append(("total", format_seconds(total), ""))
        width = max(len(r[0]) for r in rows)
        lines = [f"{self.command}: time by phase"]
        for name, secs, note in rows:
            lines.append(f"  {name:<{width}}  {secs:>9}" + (f"  ({note})" if note else ""))
        return "\n".join(lines)

    def show(self) -> None:
        """Print :meth:`table` after an empty line (on the process that runs the command, once)."""
        print("\n" + self.table(), flush=True)


def command_start(from_process_start: bool) -> float:
    """The ``time.perf_counter()`` reading a command's time counts from: this process's start when it
    runs as a command (``from_process_start``: its imports count), else now (called in-process)."""
    return time.perf_counter() - (process_age() if from_process_start else 0.0)


def per_second(count: int, unit: str, seconds: float) -> str:
    """``"8 clips, 3.21 clips/s"``: what a phase did and how fast (no rate when nothing was timed)."""
    rate = f", {count / seconds:.2f} {unit}/s" if seconds > 0 and count > 0 else ""
    return f"{count} {unit}{rate}"


def format_seconds(seconds: float) -> str:
    """``"8.1 s"`` under a minute, ``"2 min 05 s"`` above."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s"


def process_age() -> float:
    """Seconds since this process started (Linux ``/proc``; 0 where it cannot be read)."""
    try:
        import os

        with open("/proc/self/stat") as f:
            # the command name (field 2) may hold spaces: count the fields after its closing parenthesis
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0

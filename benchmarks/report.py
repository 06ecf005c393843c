"""The benchmarks page (``docs/benchmarks.md``): the machine a table was measured on, and its sections
between ``<!-- name:begin/end -->`` markers, each rewritten by the benchmark that measures it."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else its architecture."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine(device: str) -> str:
    """One line naming the GPU (``cuda``) or the CPU, and torch's version."""
    if device == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (
        f"{os.cpu_count()} CPU cores ({cpu_model()}), {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def write_section(name: str, text: str, docs_path: Path | None = None) -> None:
    """Replace (or append) the section between ``<!-- name:begin/end -->`` markers of the benchmarks page,
    written atomically (a reader or an interrupted run never sees a half-written page)."""
    from interdyn.utils.files import write_atomic

    path = docs_path or DOCS
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    docs = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in docs:
        docs = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, docs, flags=re.S)
    else:
        docs = docs.rstrip() + "\n\n" + block + "\n"
    write_atomic(path, docs)


def publish(text: str, section: str, write: bool = True) -> None:
    """Print a benchmark's markdown and, with ``write``, make it the page's section ``section``."""
    print(text)
    if write:
        write_section(section, text)

"""The Python packages a GPU node without network access lacks, packed small enough to copy there.

Such a node (docs/benchmarks.md, "On a GPU node without network access") may have Python 3.12 with
PyTorch, Lightning, transformers, torchmetrics, tensorboard and OpenCV, but fetch nothing. This script
downloads the rest of interdyn's runtime (diffusers, webdataset, jsonargparse, PyAV and what they need
that the node does not have), unpacks the wheels into one site-packages folder and writes it as
``.devkit/site.tar.xz``, recompressed so that the checkout and the kit stay under a 64 MiB transfer
limit (its size: docs/benchmarks.md, "On a GPU node without network access").
``benchmarks/device_gpu_check.sh`` unpacks it there.

    python benchmarks/device_kit.py          # needs the package index; writes .devkit/site.tar.xz
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / ".devkit" / "site.tar.xz"
# the transfer limit the kit is sized for: the tracked tree plus the kit
CARRY_LIMIT = 64 * 2**20
# interdyn's runtime dependencies that the machine lacks, at pyproject's pins
FROM_PYPROJECT = ("diffusers", "webdataset", "jsonargparse", "av")
# their own dependencies that the machine lacks (diffusers', jsonargparse[signatures]' and webdataset's
# others are there)
EXTRA = ("braceexpand==0.1.7", "docstring-parser==0.18.0", "typeshed-client==2.15.0")
# the machine's interpreter
PLATFORM = [
    "--python-version", "3.12", "--implementation", "cp",
    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux2014_x86_64",
]  # fmt: skip


def pinned(names: tuple[str, ...] = FROM_PYPROJECT, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """``name==version`` for each of ``names`` as pyproject.toml pins it (extras dropped)."""
    text = pyproject.read_text()
    out = []
    for name in names:
        match = re.search(rf'"{re.escape(name)}(?:\[[^\]]*\])?==([^"]+)"', text)
        if match is None:
            raise SystemExit(f"error: pyproject.toml does not pin {name}")
        out.append(f"{name}=={match.group(1)}")
    return out


def tracked_bytes() -> int:
    """The size of the files git tracks: what is copied besides the kit."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(
        b"\0"
    )
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def build(wheels: Path, site: Path, out: Path) -> None:
    """Unpack every wheel in ``wheels`` into ``site`` and write it to ``out`` (through a temporary file)."""
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise SystemExit(f"error: no wheels in {wheels}")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
         "--target", str(site), *map(str, found)],
        check=True,
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w:xz") as tar:
        for path in sorted(site.iterdir()):
            tar.add(path, arcname=path.name)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=KIT)
    parser.add_argument(
        "--wheels", type=Path, default=None, help="use the wheels in this folder instead of downloading"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="devkit-") as tmp:
        wheels = args.wheels or Path(tmp) / "wheels"
        if args.wheels is None:
            packages = [*pinned(), *EXTRA]
            print("downloading", " ".join(packages), flush=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                 *PLATFORM, "-d", str(wheels), *packages],
                check=True,
            )  # fmt: skip
        build(wheels, Path(tmp) / "site", args.out)
    size = args.out.stat().st_size
    carried = size + tracked_bytes()
    print(f"{args.out}: {size / 1e6:.1f} MB; with the tracked tree {carried / 2**20:.1f} MiB")
    if carried > CARRY_LIMIT:
        print(f"warning: over the {CARRY_LIMIT // 2**20} MiB transfer limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

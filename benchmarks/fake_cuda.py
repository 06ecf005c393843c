"""Fake CUDA tensors for the memory analysis (benchmarks/train_analysis.py): autocast with a device's rules
without the device, GPU attention kernels' saved tensors, and counters of saved activations, live bytes
and autocast's weight copies. Nothing is allocated and no GPU is needed.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

GIB = 2**30
RULES = ("cuda", "cpu")  # the device whose autocast rules the fake tensors follow


class SavedBytes:
    """A saved-tensor pack hook that adds up the bytes of each saved buffer once (a tensor saved by
    several ops, or views of one buffer, count once), by dtype. Buffers in ``exclude`` (the storages of
    the module's parameters and buffers: static memory, counted as such) are left out."""

    def __init__(self, exclude: set[int] | None = None) -> None:
        self.bytes = 0
        self.by_dtype: dict[str, int] = {}
        self.seen: set[int] = set(exclude or ())
        self._alive: list[torch.Tensor] = []  # keeps the storage ids unique while counting

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        storage = x.untyped_storage()
        if storage._cdata not in self.seen:
            self.seen.add(storage._cdata)
            self.bytes += storage.nbytes()
            dtype = str(x.dtype).removeprefix("torch.")
            self.by_dtype[dtype] = self.by_dtype.get(dtype, 0) + storage.nbytes()
        self._alive.append(x)
        return x


class LiveBytes(TorchDispatchMode):
    """Tracks the tensors that operators create: the largest one, and (``track_live``) the peak of the
    bytes alive at once, freed when the last Python reference to a storage goes. Only exact where no
    C++-side reference outlives the Python one, i.e. without autograd (the encoders under no_grad)."""

    def __init__(self, track_live: bool = False) -> None:
        super().__init__()
        self.track_live = track_live
        self.largest = 0
        self.now = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage -> [live tensor objects, bytes]

    def _release(self, key: int) -> None:
        entry = self._refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.now -= entry[1]
            del self._refs[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            self.largest = max(self.largest, storage.nbytes())
            if self.track_live:
                key = storage._cdata
                if key not in self._refs:
                    self._refs[key] = [0, storage.nbytes()]
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                self._refs[key][0] += 1
                weakref.finalize(t, self._release, key)
        return out


class WeightCopies(TorchDispatchMode):
    """The copies in the autocast dtype that autocast makes of trainable weights. Autocast caches the cast
    of a leaf tensor that requires grad (the fp32 branch weights under ``bf16-mixed``) until the outermost
    autocast region ends, i.e. for the whole forward pass, whether or not a checkpointed op saves it. Use
    it inside autocast only (inside an autocast kernel ``torch.is_autocast_enabled`` reads False, so the
    mode cannot tell itself)."""

    def __init__(self, trainable: set[int], dtype: torch.dtype) -> None:
        super().__init__()
        self.trainable, self.dtype = trainable, dtype
        self.copies: dict[int, list[torch.Tensor]] = {}  # weight's storage -> its copies

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        source = args[0] if args else None
        if (
            func is torch.ops.aten._to_copy.default
            and isinstance(source, torch.Tensor)
            and source.untyped_storage()._cdata in self.trainable
            and source.dtype != self.dtype
            and out.dtype == self.dtype
        ):
            self.copies.setdefault(source.untyped_storage()._cdata, []).append(out)
        return out

    def bytes_beyond(self, counted: set[int]) -> int:
        """Bytes of one copy of each weight, for the weights none of whose copies is in ``counted`` (a
        saved copy is an activation already)."""
        return sum(
            copies[0].untyped_storage().nbytes()
            for copies in self.copies.values()
            if not any(c.untyped_storage()._cdata in counted for c in copies)
        )


def _gpu_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, grad: bool) -> Any:
    """The fused attention a recent NVIDIA GPU runs: flash attention for fp16/bf16 with a head size up to
    256 (saves q, k, v, the output and a float32 log-sum-exp per query), else memory-efficient attention
    (the same, its log-sum-exp padded to 32 queries)."""
    d = q.shape[-1]
    if q.dtype in (torch.float16, torch.bfloat16) and d <= 256 and d % 8 == 0:
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[0]
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, None, grad, 0.0, False, scale=scale
    )[0]


@contextlib.contextmanager
def gpu_attention() -> Iterator[None]:
    """Attention as a GPU computes it. On fake (and meta) tensors ``scaled_dot_product_attention`` takes
    the math path: it materialises the score matrix in float32 and saves it for the backward pass (2.5 GiB
    per layer at 256x384, batch 4), which no GPU kernel does. CUDA picks flash or memory-efficient
    attention, which save the output and a log-sum-exp only; their fake implementations give the exact
    shapes, dtypes and FLOPs. Under autocast the inputs are cast first, as autocast does for SDPA."""
    original = F.scaled_dot_product_attention

    def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any = None,
              dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
              **kw: Any) -> torch.Tensor:  # fmt: skip
        simulated = isinstance(q, FakeTensor) or q.device.type == "meta"
        if attn_mask is not None or dropout_p or is_causal or kw or not simulated:
            return original(q, k, v, attn_mask, dropout_p, is_causal, scale=scale, **kw)
        device = q.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            q, k, v = (x.to(dtype) for x in (q, k, v))
        grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
        return _gpu_kernel(q, k, v, scale, grad)

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@contextlib.contextmanager
def device_autocast(device: str, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast(device, dtype)``, also for CUDA without a GPU: there ``torch.autocast`` switches
    itself off, so the same state is set by hand (enabled, dtype, the cast cache, cleared when the
    outermost region ends, as ``torch.autocast`` does). ``dtype=None``: no autocast."""
    if dtype is None:
        yield
        return
    if device != "cuda" or torch.cuda.is_available():
        with torch.autocast(device, dtype=dtype):
            yield
        return
    enabled, previous, cache = (
        torch.is_autocast_enabled(device), torch.get_autocast_dtype(device), torch.is_autocast_cache_enabled()
    )  # fmt: skip
    torch.set_autocast_enabled(device, True)
    torch.set_autocast_dtype(device, dtype)
    torch.set_autocast_cache_enabled(True)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled(device, enabled)
        torch.set_autocast_dtype(device, previous)
        torch.set_autocast_cache_enabled(cache)


@contextlib.contextmanager
def simulated() -> Iterator[None]:
    """What the analysis changes while it runs: GPU attention kernels, the noise scheduler built on the
    CPU (it computes tables with ``.item()``), and no warning from autocast about the missing GPU."""
    import interdyn.models.svd as svd_module

    scheduler_class = svd_module.EulerDiscreteScheduler

    def scheduler_on_cpu(**kw: Any) -> Any:
        with torch.device("cpu"):
            return scheduler_class(**kw)

    svd_module.EulerDiscreteScheduler = scheduler_on_cpu
    try:
        with gpu_attention(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
            yield
    finally:
        svd_module.EulerDiscreteScheduler = scheduler_class


def to_fake(module: torch.nn.Module, rules: str) -> FakeTensorMode:
    """Give a module built on the meta device fake storage on the device ``rules`` names (``"cuda"`` or
    ``"cpu"``), in place, and return the fake mode to run it under (nothing is allocated)."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    device = torch.device(rules)
    module._apply(lambda t: mode.fake_tensor_converter.from_meta_and_device(mode, t.detach(), device))
    return mode


def static_storages(module: torch.nn.Module) -> set[int]:
    """The storages of the module's parameters and buffers."""
    return {t.untyped_storage()._cdata for t in [*module.parameters(), *module.buffers()]}

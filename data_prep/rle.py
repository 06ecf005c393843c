"""COCO run-length encoding of binary masks (the format of CLEVRER's frame-parser masks), in numpy.

A mask of size ``(h, w)`` is flattened in column-major order and stored as alternating run lengths,
starting with a run of zeros. The compressed string form writes each run (from the third on, as the
difference to the run two places back) as little-endian groups of 5 bits, each group offset by 48 and
flagged with 0x20 when more groups follow; the last group's bit 0x10 carries the sign. Decoding does
not need pycocotools.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def counts_from_string(s: str | bytes) -> list[int]:
    """Compressed COCO counts string -> run lengths."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ValueError("truncated RLE string")
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def counts_to_string(counts: list[int]) -> str:
    """Run lengths -> compressed COCO counts string."""
    out = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = not ((c & 0x10) == 0 and x == 0 or (c & 0x10) != 0 and x == -1)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def decode(rle: dict[str, Any]) -> np.ndarray:
    """``{"size": [h, w], "counts": str | list[int]}`` -> bool mask ``(h, w)``."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    counts = counts_from_string(counts) if isinstance(counts, str | bytes) else [int(c) for c in counts]
    if any(c < 0 for c in counts) or sum(counts) != h * w:
        raise ValueError(f"RLE runs sum to {sum(counts)}, expected {h * w} for size {h}x{w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T


def encode(mask: np.ndarray) -> dict[str, Any]:
    """Bool mask ``(h, w)`` -> compressed COCO RLE ``{"size": [h, w], "counts": str}``."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    flat = mask.T.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": [h, w], "counts": counts_to_string(runs)}

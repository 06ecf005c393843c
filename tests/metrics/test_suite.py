"""Merging the evaluation states of several ranks (:func:`interdyn.metrics.suite.merge_states`)."""

from __future__ import annotations

import torch

from interdyn.metrics.suite import merge_states, summarize


def test_rank_states_merge_in_key_order_whatever_the_split():
    """The ranks' evaluation states merge into the one-process state: rows and I3D features follow the
    clip keys, so FVD/KVD do not depend on which rank scored which clip, or in which order."""
    gen = torch.Generator().manual_seed(0)
    keys, n = ["a", "b", "c", "d"], 2
    real = {k: torch.randn(400, generator=gen, dtype=torch.float64) for k in keys}
    fake = {k: torch.randn(n, 400, generator=gen, dtype=torch.float64) for k in keys}

    def state(order: list[str]) -> dict:
        rows = [{"key": k, "sample": i, "ssim": float(fake[k][i, 0])} for k in order for i in range(n)]
        return {
            "rows": rows,
            "real": torch.stack([real[k] for k in order]),
            "fake": torch.cat([fake[k] for k in order]),
            "shape": (2, 3, 8, 8),
        }

    one = merge_states([state(keys)])
    split = merge_states([state(["c", "a"]), state(["d", "b"])])
    assert split["rows"] == one["rows"] and [r["key"] for r in one["rows"]] == [
        k for k in keys for _ in range(n)
    ]
    assert torch.equal(split["real"], one["real"]) and torch.equal(split["fake"], one["fake"])
    assert summarize([split], ["fvd", "kvd"]) == summarize([one], ["fvd", "kvd"])
    assert summarize([one], ["fvd"])["num_videos"] == 4
    # a clip scored on two ranks counts once
    assert (
        merge_states([state(["a", "b"]), state(["b", "c"])])["rows"]
        == merge_states([state(["a", "b", "c"])])["rows"]
    )

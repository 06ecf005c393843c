"""The shard format module: what the writer encodes, the reader decodes; one skip exception for both."""

from __future__ import annotations

import json

import numpy as np
import pytest

from interdyn.data.shard_format import (
    MASKS_FIELD,
    META_FIELD,
    SkipSample,
    decode_sample,
    encode_fields,
    encode_masks,
    shard_name,
)


def _sample(control: np.ndarray, objects: np.ndarray | None = None, names: list[str] | None = None) -> dict:
    fields = encode_fields(
        "ds-0001",
        {"video.webm": b"video", MASKS_FIELD: encode_masks(control, objects, names), META_FIELD: {"fps": 12}},
    )
    return {"__key__": "ds-0001", **fields}


def test_masks_and_meta_round_trip() -> None:
    rng = np.random.default_rng(0)
    control = rng.random((5, 6, 7)) > 0.5
    objects = rng.random((2, 5, 6, 7)) > 0.5
    decoded = decode_sample(_sample(control, objects, ["cup", "box"]), with_objects=True)
    assert decoded.key == "ds-0001" and decoded.video == b"video" and decoded.meta == {"fps": 12}
    assert decoded.control.dtype == bool and np.array_equal(decoded.control, control)
    assert np.array_equal(decoded.objects, objects) and decoded.object_names == ["cup", "box"]
    # objects are decoded only when asked for
    assert decode_sample(_sample(control, objects), with_objects=False).objects is None


def test_samples_outside_the_format_are_skipped_by_reason() -> None:
    good = _sample(np.ones((2, 3, 3), bool))
    with pytest.raises(SkipSample) as info:
        decode_sample({k: v for k, v in good.items() if k != MASKS_FIELD})
    assert info.value.reason == "incomplete"
    with pytest.raises(SkipSample) as info:
        decode_sample({k: v for k, v in good.items() if not k.startswith("video")})
    assert info.value.reason == "incomplete" and info.value.detail == "no video field"
    for bad in ({MASKS_FIELD: b"not an npz"}, {META_FIELD: json.dumps([1, 2]).encode()}):
        with pytest.raises(SkipSample) as info:
            decode_sample({**good, **bad})
        assert info.value.reason == "bad_masks_or_json"


def test_writer_side_checks() -> None:
    assert shard_name("ssv2", "train", 12) == "ssv2-train-000012.tar"
    with pytest.raises(ValueError, match="no dots"):
        encode_fields("a.b", {"json": {}})
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        encode_masks(np.zeros((3, 3), bool))

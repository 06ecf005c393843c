"""One bad sample never ends a run (values that parse but make no sense are skipped and counted), and
a training stream where no shard gives a sample stops with one sentence instead of spinning forever."""

from __future__ import annotations

import io
import json
import signal
import tarfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from data_prep.shard_writer import write_samples
from interdyn.data import ClipDecoder, ShardClipStream, SkippedSampleWarning
from interdyn.data.clip_spec import PAPER_CLIP
from interdyn.errors import DataNotFoundError

CLIP = PAPER_CLIP.with_overrides(height=64, width=64, crop="center")  # the paper's frames, small


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


class Hung(BaseException):
    """Not an Exception: the shard reader's error handlers must not swallow it."""


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (the bug this file guards against is an endless loop)."""

    def expire(*_):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    # fires again every second: one raised inside a finalizer (a closed pipe's __del__) is swallowed
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_nonsense_values_are_skipped_and_counted(synthetic_shards, tmp_path):
    shard = sorted((synthetic_shards / "validation").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    key = sorted({name.split(".")[0] for name in members})[0]
    good = {name.split(".", 1)[1]: data for name, data in members.items() if name.startswith(key + ".")}
    meta = json.loads(good["json"])
    bad = {
        "json-list": {"json": b"[1, 2]"},
        "json-string": {"json": b'"fps"'},
        "mask-0d": {"masks.npz": npz(control=np.array(True))},
        "mask-2d": {"masks.npz": npz(control=np.ones((64, 96), bool))},
        "fps-text": {"json": json.dumps({**meta, "fps": "fast"}).encode()},
        "fps-nan": {"json": json.dumps({**meta, "fps": float("nan")}).encode()},
        "fps-negative": {"json": json.dumps({**meta, "fps": -14.0}).encode()},
        "fps-list": {"json": json.dumps({**meta, "fps": [14]}).encode()},
        "frames-negative": {"json": json.dumps({**meta, "num_frames": -3}).encode()},
    }
    samples = [(name, {**good, **fields}) for name, fields in bad.items()] + [("good", good)]
    write_samples(tmp_path / "test" / "bad-test-000000.tar", samples)
    stream = ShardClipStream(str(tmp_path / "test" / "*.tar"), ClipDecoder(CLIP), train=False)
    with pytest.warns(SkippedSampleWarning):
        keys = [clip["key"] for clip in stream]
    assert keys == ["good"]
    assert dict(stream.skipped) == {"bad_masks_or_json": 4, "bad_metadata": 5}


@pytest.mark.parametrize("kind", ["empty", "garbage", "pipe"])
def test_training_stops_when_no_shard_gives_a_sample(tmp_path, kind):
    if kind == "empty":
        with tarfile.open(tmp_path / "empty-000000.tar", "w"):
            pass
        urls = str(tmp_path / "*.tar")
    elif kind == "garbage":
        (tmp_path / "garbage-000000.tar").write_bytes(b"this is not a tar file" * 100)
        urls = str(tmp_path / "*.tar")
    else:
        urls = "pipe:false"
    stream = ShardClipStream(urls, ClipDecoder(CLIP), train=True, samples_per_worker=4)
    with time_limit(30), warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSampleWarning)
        with pytest.raises(DataNotFoundError, match="in a row gave no sample"):
            next(iter(stream))


def test_missing_shards_are_an_interdyn_error_with_a_hint(tmp_path: Path):
    with pytest.raises(DataNotFoundError, match="make shards"):
        ShardClipStream(str(tmp_path / "nothing-*.tar"), ClipDecoder(CLIP), train=True)
    with pytest.raises(DataNotFoundError, match="make shards"):
        ShardClipStream(str(tmp_path / "gone-000000.tar"), ClipDecoder(CLIP), train=False)

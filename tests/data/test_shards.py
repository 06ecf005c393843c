"""Reading shards: exactly-once evaluation splits, skipping bad data, filters, URL forms."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_prep.shard_writer import write_samples
from interdyn.data import ClipDecoder, ShardClipStream, ShardDataModule, SkippedSampleWarning, expand_urls
from interdyn.data.clip_spec import PAPER_CLIP
from interdyn.data.shards import collate_clips

CLIP = PAPER_CLIP.with_overrides(height=64, width=64, crop="center")  # the paper's frames, small


def keys_of(stream: ShardClipStream, num_workers: int) -> list[str]:
    loader = DataLoader(stream, batch_size=2, num_workers=num_workers, collate_fn=collate_clips)
    return [k for batch in loader for k in batch["key"]]


def all_keys(folder: Path) -> set[str]:
    return {m.name.split(".")[0] for shard in sorted(folder.glob("*.tar")) for m in tarfile.open(shard)}


@pytest.mark.parametrize("split", ["validation", "test"])
def test_two_ranks_two_workers_see_every_sample_once(synthetic_shards, split):
    folder = synthetic_shards / split
    seen: list[str] = []
    for rank in range(2):
        stream = ShardClipStream(
            str(folder / "*.tar"), ClipDecoder(CLIP), train=False, rank=rank, world_size=2
        )
        seen += keys_of(stream, num_workers=2)
    assert len(seen) == len(set(seen))  # disjoint: no duplicates anywhere
    assert set(seen) == all_keys(folder)  # complete


def test_evaluation_clips_are_deterministic(synthetic_shards):
    def make() -> ShardClipStream:
        return ShardClipStream(str(synthetic_shards / "validation/*.tar"), ClipDecoder(CLIP), train=False)

    a, b = next(iter(make())), next(iter(make()))
    assert a["key"] == b["key"] and torch.equal(a["pixel_values"], b["pixel_values"])


def test_training_streams_differ_by_rank_and_are_seeded(synthetic_shards):
    def first_keys(rank: int, seed: int) -> list[str]:
        decoder = ClipDecoder(CLIP.with_overrides(crop="random"), random_window=True)
        stream = ShardClipStream(
            str(synthetic_shards / "train/*.tar"),
            decoder,
            train=True,
            rank=rank,
            world_size=2,
            samples_per_worker=6,
            shuffle_buffer=4,
            seed=seed,
        )
        return [clip["key"] for clip in stream]

    assert first_keys(0, 0) == first_keys(0, 0)
    assert first_keys(0, 0) != first_keys(1, 0)
    assert len(first_keys(0, 0)) == 6


def write_bad_shards(folder: Path, good_shard: Path) -> tuple[set[str], str]:
    """One shard with a corrupt video between good samples, and a truncated copy of a good shard."""
    members = {m.name: tarfile.open(good_shard).extractfile(m).read() for m in tarfile.open(good_shard)}
    keys = sorted({name.split(".")[0] for name in members})
    samples = []
    for i, key in enumerate(keys[:3]):
        fields = {ext: members[f"{key}.{ext}"] for ext in ("video.mp4", "masks.npz", "json")}
        if i == 1:
            fields["video.mp4"] = b"\x00\x00\x00 this is not a video" + fields["video.mp4"][-200:]
        samples.append((f"{key}_copy", fields))
    write_samples(folder / "test" / "bad-test-000000.tar", samples)
    data = good_shard.read_bytes()
    (folder / "test" / "bad-test-000001.tar").write_bytes(data[: len(data) // 2])  # truncated mid-sample
    return {f"{keys[0]}_copy", f"{keys[2]}_copy"}, f"{keys[1]}_copy"


def test_corrupt_video_and_truncated_tar_are_skipped_and_counted(synthetic_shards, tmp_path):
    good = sorted((synthetic_shards / "validation").glob("*.tar"))[0]
    expected, corrupt_key = write_bad_shards(tmp_path, good)
    stream = ShardClipStream(str(tmp_path / "test" / "*.tar"), ClipDecoder(CLIP), train=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        delivered = [clip["key"] for clip in stream]
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedSampleWarning)]
    assert expected <= set(delivered)  # the good samples of the first shard
    assert corrupt_key not in delivered
    assert any(corrupt_key in m and "bad_video" in m for m in messages)
    assert stream.skipped["bad_video"] == 1
    assert stream.skipped["bad_shard"] == 1  # the truncated shard, named in a warning
    assert any("bad-test-000001.tar" in m for m in messages)
    assert len(delivered) >= len(expected)  # samples before the truncation point still arrive


def test_short_clips_and_invisible_drivers_are_filtered(tmp_path, synthetic_shards):
    good = sorted((synthetic_shards / "validation").glob("*.tar"))[0]
    members = {m.name: tarfile.open(good).extractfile(m).read() for m in tarfile.open(good)}
    key = sorted({n.split(".")[0] for n in members})[0]
    meta = json.loads(members[f"{key}.json"])
    control = np.load(io.BytesIO(members[f"{key}.masks.npz"]))["control"]
    empty = io.BytesIO()
    np.savez_compressed(empty, control=np.zeros_like(control))
    video, masks = members[f"{key}.video.mp4"], members[f"{key}.masks.npz"]
    samples = [
        # 14 frames at 7 fps from 14 fps need 27
        ("short", {"video.mp4": video, "masks.npz": masks, "json": {**meta, "num_frames": 20}}),
        ("nodriver", {"video.mp4": video, "masks.npz": empty.getvalue(), "json": meta}),
        ("fine", {"video.mp4": video, "masks.npz": masks, "json": meta}),
    ]
    write_samples(tmp_path / "test" / "filt-test-000000.tar", samples)
    stream = ShardClipStream(str(tmp_path / "test/*.tar"), ClipDecoder(CLIP), train=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSampleWarning)
        assert [c["key"] for c in stream] == ["fine"]
    assert stream.skipped == {"too_short": 1, "driver_not_visible": 1}
    lenient = ShardClipStream(
        str(tmp_path / "test/*.tar"), ClipDecoder(CLIP, require_driver_in_first_frame=False), train=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSampleWarning)
        assert [c["key"] for c in lenient] == ["nodriver", "fine"]


def test_url_forms(synthetic_shards, tmp_path):
    folder = synthetic_shards / "validation"
    shards = sorted(str(p) for p in folder.glob("*.tar"))
    assert expand_urls(str(folder / "*.tar")) == shards
    assert expand_urls(str(folder / "synthetic-validation-{000000..000003}.tar")) == shards
    assert expand_urls([shards[0], shards[1]]) == shards[:2]
    piped = f"pipe:cat {folder}/synthetic-validation-{{000000..000001}}.tar"
    assert expand_urls(piped) == [f"pipe:cat {s}" for s in shards[:2]]
    stream = ShardClipStream(piped, ClipDecoder(CLIP), train=False)
    assert len([c for c in stream]) == 6


def test_datamodule_batches_follow_the_contract(synthetic_shards):
    dm = ShardDataModule(
        train_shards=str(synthetic_shards / "train/*.tar"),
        val_shards=str(synthetic_shards / "validation/*.tar"),
        clip={"height": 64, "width": 64},  # as a config's `clip:` group
        batch_size=2,
        num_workers=0,
        epoch_samples=6,
    )
    train = list(dm.train_dataloader())
    assert len(train) == 3  # epoch_samples rounded to whole batches
    compact = train[0]
    assert compact["pixel_values"].dtype == torch.uint8 and compact["control"].dtype == torch.bool
    batch = dm.on_after_batch_transfer(compact, 0)  # what the module receives
    assert batch["pixel_values"].shape == (2, 14, 3, 64, 64) and batch["control"].shape == (2, 14, 3, 64, 64)
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    assert set(batch["control"].unique().tolist()) <= {-1.0, 1.0}
    assert (batch["control"][:, 0] > 0).flatten(1).any(1).all()  # driver visible in the first frame
    assert sum(len(b["key"]) for b in dm.val_dataloader()) == 10


def test_missing_shards_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shards match"):
        ShardClipStream(str(tmp_path / "*.tar"), ClipDecoder(CLIP), train=False)

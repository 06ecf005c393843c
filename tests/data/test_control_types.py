"""Control-signal types, per-object masks and evaluation perturbations in the shard decoder and DataModule,
on real built-in-dataset shards; the branch's input channels follow the chosen control type."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from interdyn.contract import to_contract, validate_batch
from interdyn.data import ClipDecoder, ShardDataModule
from interdyn.data.clip_spec import PAPER_CLIP
from interdyn.data.perturb import MaskPerturbation, dilate
from interdyn.data.shards import CONTROL_CHANNELS, collate_clips
from interdyn.data.transforms import apply_geometry
from interdyn.errors import BatchContractError, ConfigError
from interdyn.models.svd import TINY_ARCHITECTURE
from interdyn.training.module import InterDynModule
from tests.helpers import REPO_ROOT, TINY_CONTROL_CHANNELS

CLIP = PAPER_CLIP.with_overrides(num_frames=6, height=64, width=64, window="start")


def first_sample(shards: Path) -> dict:
    shard = sorted((shards / "test").glob("*.tar"))[0]
    sample: dict = {}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, field = member.name.partition(".")
            if sample and sample["__key__"] != key:
                break
            sample["__key__"] = key
            sample[field] = tar.extractfile(member).read()
    return sample


def decode(sample: dict, **kw) -> dict:
    return ClipDecoder(CLIP, **kw)(sample, random.Random(0))


def test_control_types_shapes_and_content(synthetic_shards):
    sample = first_sample(synthetic_shards)
    with np.load(io.BytesIO(sample["masks.npz"])) as npz:
        assert "objects" in npz.files  # the built-in dataset keeps every disc's mask
    binary = decode(sample)
    boxes = decode(sample, control_type="boxes")
    semantic = decode(sample, control_type="semantic")
    oracle = decode(sample, control_type="oracle", with_objects=True)
    driver = binary["control"]
    assert driver.shape == (6, 64, 64)
    # boxes: a superset of the mask that fills its bounding box in every frame
    assert boxes["control"].shape == driver.shape and (boxes["control"] | ~driver).all()
    for t in range(6):
        ys, xs = torch.nonzero(driver[t], as_tuple=True)
        if len(ys):
            assert boxes["control"][t, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()
    # semantic / oracle: channel 0 is the driver; channel 1 the other entities, held (semantic) or moving
    for item in (semantic, oracle):
        assert item["control"].shape == (6, 2, 64, 64)
        assert torch.equal(item["control"][:, 0], driver)
        assert not (item["control"][0, 1] & driver[0]).any()
    assert not (oracle["control"][:, 1] & driver).any()
    others = oracle["objects"].any(0) & ~driver
    assert torch.equal(oracle["control"][:, 1], others)
    assert all(torch.equal(semantic["control"][t, 1], semantic["control"][0, 1]) for t in range(6))
    assert torch.equal(semantic["control"][0, 1], others[0])
    assert len(oracle["object_names"]) == oracle["objects"].shape[0] > 0


def test_objects_follow_the_frames_crop(synthetic_shards):
    """Per-object masks get the same resize, crop and flip as the frames and the driver masks."""
    sample = first_sample(synthetic_shards)
    random_crop = CLIP.with_overrides(crop="random")
    clip = ClipDecoder(random_crop, hflip=True, with_objects=True)(sample, random.Random(3))
    with np.load(io.BytesIO(sample["masks.npz"])) as npz:
        source_driver = npz["control"][clip["source_indices"].numpy()]
    geometry = tuple(clip["geometry"].tolist())
    geometry = (*geometry[:4], bool(geometry[4]))
    assert torch.equal(apply_geometry(source_driver, 64, 64, geometry), clip["control"])
    assert clip["objects"].shape[1:] == (6, 64, 64)


def test_eval_perturbation_changes_only_evaluation_masks(synthetic_shards):
    perturbation = {"kind": "dilate", "severity": 2, "seed": 0}
    data = ShardDataModule(
        train_shards=str(synthetic_shards / "train" / "*.tar"),
        test_shards=str(synthetic_shards / "test" / "*.tar"),
        clip=CLIP, batch_size=2, num_workers=0, eval_perturbation=perturbation,
    )  # fmt: skip
    clean = ShardDataModule(
        test_shards=str(synthetic_shards / "test" / "*.tar"), clip=CLIP, batch_size=2, num_workers=0,
    )  # fmt: skip
    noisy_batch = next(iter(data.test_dataloader()))
    clean_batch = next(iter(clean.test_dataloader()))
    assert noisy_batch["key"] == clean_batch["key"]
    assert torch.equal(noisy_batch["control"], dilate(clean_batch["control"], 2))
    assert noisy_batch["control"].sum() > clean_batch["control"].sum()
    assert data._decoder(train=True).perturbation is None
    with pytest.raises(ConfigError, match="unknown mask perturbation .blur"):
        ShardDataModule(eval_perturbation={"kind": "blur", "severity": 1})
    assert MaskPerturbation(**perturbation).label == "dilate=2"


@pytest.mark.parametrize("control_type", ["binary", "boxes", "semantic", "oracle"])
def test_branch_channels_follow_the_control_type(control_type, synthetic_shards):
    """Each ablation config sets the control type only (`interdyn fit` gives the model the DataModule's
    control_channels, tests/commands/test_cli.py); a branch with that many channels takes a batch of that type."""
    config = yaml.safe_load(
        (REPO_ROOT / "configs" / "ablations" / f"control_{control_type}.yaml").read_text()
    )
    assert config["data"]["init_args"]["control_type"] == control_type
    assert "conditioning_channels" not in (config.get("model") or {})
    channels = ShardDataModule(control_type=control_type).control_channels
    assert channels == CONTROL_CHANNELS[control_type]
    module = InterDynModule(
        svd={**TINY_ARCHITECTURE, "seed": 0},
        conditioning_channels=channels,
        conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS,
    )
    assert module.controlnet.controlnet_cond_embedding.conv_in.in_channels == channels
    sample = first_sample(synthetic_shards)
    batch = to_contract(collate_clips([decode(sample, control_type=control_type)] * 2))
    pixels, control = module._checked(batch)
    assert control.shape[2] == channels and control.min() == -1 and control.max() == 1
    other = 2 if channels == 3 else 3
    with pytest.raises(BatchContractError, match="control_type"):
        validate_batch(batch, control_channels=other)


def test_cache_needs_binary_control():
    with pytest.raises(ConfigError, match="control_type: binary"):
        ShardDataModule(cached_conditioning=True, control_type="semantic")

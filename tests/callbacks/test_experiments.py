"""The test-time experiments (mask-noise sweep, force propagation, counterfactuals) in a real ``Trainer.test``
with the tiny model, on clips of the built-in dataset decoded from real shards (per-object masks cropped
like the frames)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from interdyn.callbacks import CounterfactualEvaluation, ForcePropagation, MaskNoiseSweep, VideoEvaluation
from interdyn.callbacks.clip_sampler import SampleMemo
from interdyn.contract import to_contract
from interdyn.data import ClipDecoder, ShardClipStream
from interdyn.data.clip_spec import PAPER_CLIP
from interdyn.data.perturb import dilate
from interdyn.data.sampling import key_seed
from interdyn.metrics.regions import hit_roles
from interdyn.models.svd import TINY_ARCHITECTURE
from interdyn.training.module import InterDynModule
from tests.helpers import FPS, FRAMES, TINY_CONTROL_CHANNELS

STEPS = 2
GROUP = "test-000000"
# Seed 2 of the generator makes a test group whose variant 0 pushes disc0, which then hits disc1
# (a direct and an indirect hit inside the clip window), and whose variant 1 pushes both directly.
DATA_SEED = 2


class SpyModule(InterDynModule):
    """The tiny module, recording what each ``sample`` call received."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[dict[str, Any]] = []
        self.fake: str | None = None  # "truth" / "frozen": return the ground truth / its first frame

    def sample(
        self, pixel_values: torch.Tensor, control: torch.Tensor, seed: int | None = None, **overrides: Any
    ) -> torch.Tensor:
        self.calls.append({"control": control.detach().clone(), "seed": seed, **overrides})
        if self.fake is None:
            return super().sample(pixel_values, control, seed=seed, **overrides)
        video = (pixel_values + 1) / 2
        if self.fake == "frozen":
            video = video[:, :1].expand_as(video)
        return video[:, None].repeat(1, overrides.get("num_videos_per_prompt", 1), 1, 1, 1, 1)


@pytest.fixture(scope="module")
def module() -> SpyModule:
    return SpyModule(
        svd={**TINY_ARCHITECTURE, "seed": 0},
        conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS,
        sampling={"num_inference_steps": STEPS},
    )


class ObjectsDecoder:
    """:class:`ClipDecoder` plus the per-object masks (``masks.npz["objects"]``) of the clip's frames with
    the same crop, as ``objects`` (K, T, H, W) bool and ``object_names``."""

    def __init__(self) -> None:
        self.clips = ClipDecoder(PAPER_CLIP.with_overrides(height=64, width=64, crop="center"))

    def __call__(self, sample: dict[str, Any], rng: Any) -> dict[str, Any]:
        clip = self.clips(sample, rng)
        with np.load(io.BytesIO(sample["masks.npz"])) as npz:
            objects, names = npz["objects"], [str(n) for n in npz["object_names"]]
        scale_y, scale_x, top, left, flipped = clip["geometry"].tolist()
        assert (scale_y, scale_x, flipped) == (1.0, 1.0, 0.0)  # 64x96 -> 64x64: a crop, no resize
        top, left = int(top), int(left)
        objects = objects[:, clip["source_indices"].numpy(), top : top + 64, left : left + 64]
        return {**clip, "objects": torch.from_numpy(objects.copy()), "object_names": names}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of equal shapes, list the rest (``objects`` differ in K), expand to the contract."""
    batch = {}
    for name in items[0]:
        values = [it[name] for it in items]
        stackable = name != "objects" and isinstance(values[0], torch.Tensor)
        batch[name] = torch.stack(values) if stackable else values
    return to_contract(batch)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Clips by key: the test group's two variants and one clip without a group (a train clip)."""
    from data_prep.synthetic import World, write_split

    out = tmp_path_factory.mktemp("experiment_shards")
    world = World(height=64, width=96)
    common = {"seed": DATA_SEED, "world": world, "num_frames": FRAMES, "fps": FPS, "progress": False}
    write_split(out, "test", 1, variants=2, **common)
    write_split(out, "train", 1, **common)
    stream = ShardClipStream(
        [str(out / "test/*.tar"), str(out / "train/*.tar")], ObjectsDecoder(), train=False
    )
    return {clip["key"]: clip for clip in stream}


def run_test(
    module: SpyModule,
    callback: L.Callback | list[L.Callback],
    items: list[dict],
    root: Path,
    fake: str | None = None,
) -> L.Trainer:
    callbacks = callback if isinstance(callback, list) else [callback]
    module.calls.clear()
    module.fake = fake
    quiet = {f"enable_{part}": False for part in ("progress_bar", "model_summary", "checkpointing")}
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, default_root_dir=root, callbacks=callbacks, **quiet
    )
    trainer.test(module, dataloaders=DataLoader(items, batch_size=2, collate_fn=collate))
    return trainer


def test_clips_have_the_roles_the_tests_rely_on(clips):
    v0, v1 = clips[f"synthetic-{GROUP}_v0"], clips[f"synthetic-{GROUP}_v1"]
    last = int(v0["source_indices"].max())
    assert hit_roles(v0["meta"], last) == (["disc0"], ["disc1"])
    assert hit_roles(v1["meta"], last) == (["disc0", "disc1"], [])
    assert (
        v0["meta"]["group"] == v1["meta"]["group"] == GROUP
        and "group" not in clips["synthetic-train-000000"]["meta"]
    )
    assert v0["objects"].shape == (3, 14, 64, 64) and v0["object_names"][:2] == ["disc0", "disc1"]
    assert v0["objects"][:2].any(dim=(1, 2, 3)).all()  # both hit discs are inside the crop


def test_mask_noise_sweep_perturbs_the_control_and_writes_one_row_per_level(module, clips, tmp_path):
    key = f"synthetic-{GROUP}_v0"
    sweep = MaskNoiseSweep(
        metrics=["ssim", "psnr"],
        perturbations={"dilate": [0, 2], "boxify": [1]},
        num_inference_steps=STEPS,
    )
    trainer = run_test(module, sweep, [clips[key]], tmp_path)  # out_dir: the trainer's root dir

    report = json.loads((tmp_path / "mask_noise.json").read_text())
    levels = {row["label"]: row for row in report["levels"]}
    assert list(levels) == ["clean", "dilate=2", "boxify=1"]
    for row in levels.values():
        assert row["num_videos"] == 1 and 0 < row["ssim"] <= 1 and math.isfinite(row["psnr"])
    assert levels["clean"]["changed_fraction"] == 0 and levels["dilate=2"]["changed_fraction"] > 0
    assert levels["boxify=1"]["changed_vs_mask"] > 0
    table = (tmp_path / "mask_noise.md").read_text()
    assert all(f"| {label} |" in table for label in levels) and "| SSIM | PSNR |" in table
    assert "test/mask_noise/dilate=2/psnr" in trainer.callback_metrics

    # every level sampled once, with the clip's seed; the driver differs exactly as perturbed
    assert [c["seed"] for c in module.calls] == [key_seed(42, key)] * 3
    assert all(c["num_inference_steps"] == STEPS for c in module.calls)
    clean, dilated, boxed = (c["control"][0] for c in module.calls)
    masks = torch.as_tensor(clips[key]["control"])
    assert torch.equal(clean[:, 0] > 0, masks)
    assert torch.equal(dilated[:, 0] > 0, dilate(masks, 2)) and (dilated[:, 0] > 0).sum() > masks.sum()
    assert torch.equal(dilated[:, 1], dilated[:, 0]) and torch.equal(dilated[:, 2], dilated[:, 0])
    assert (boxed[:, 0] > 0).sum() > masks.sum()


def test_force_propagation_reports_direct_and_indirect_regions(module, clips, tmp_path):
    items = [clips[f"synthetic-{GROUP}_v0"], clips[f"synthetic-{GROUP}_v1"]]
    run_test(
        module, ForcePropagation(num_inference_steps=STEPS, out_dir=str(tmp_path / "fp")), items, tmp_path
    )

    report = json.loads((tmp_path / "fp" / "force_propagation.json").read_text())
    roles, counts = report["roles"], report["counts"]
    assert counts == {
        "clips": 2,
        "with_hits": 2,
        "with_indirect": 1,
        "no_roles": 0,
        "no_object_masks": 0,
        "unscored": 0,
    }
    assert (roles["direct"]["clips"], roles["direct"]["objects"]) == (2, 3)
    assert (roles["indirect"]["clips"], roles["indirect"]["objects"]) == (1, 1)
    assert (roles["all"]["clips"], roles["all"]["objects"]) == (2, 4)
    for role in ("direct", "indirect", "all"):
        entry = roles[role]
        assert entry["region_clips"] == entry["clips"]
        assert 0 < entry["region_mse"] < 1 and entry["region_psnr"] > 0
        assert 0 <= entry["physics_found"] <= 1  # the random model draws no disc: the error may be None
    indirect = [r for r in report["per_clip"] if r["role"] == "indirect"]
    assert [r["key"] for r in indirect] == [f"synthetic-{GROUP}_v0"] and indirect[0]["region_pixels"] > 0
    table = (tmp_path / "fp" / "force_propagation.md").read_text()
    assert "| direct | 2 | 3 |" in table and "| indirect | 1 | 1 |" in table and "region PSNR" in table
    assert len(module.calls) == 2


def test_counterfactual_evaluation_scores_each_group(module, clips, tmp_path):
    items = [clips["synthetic-train-000000"], clips[f"synthetic-{GROUP}_v0"], clips[f"synthetic-{GROUP}_v1"]]
    callback = CounterfactualEvaluation(num_inference_steps=STEPS, out_dir=str(tmp_path / "cf"), max_side=32)
    trainer = run_test(module, callback, items, tmp_path)

    report = json.loads((tmp_path / "cf" / "counterfactual.json").read_text())
    assert list(report["groups"]) == [GROUP] and report["groups"][GROUP]["members"] == 2
    assert report["counts"] == {"grouped_clips": 2, "ungrouped_clips": 1, "groups": 1}
    group = report["groups"][GROUP]
    assert group["chance"] == 0.5 and 0 <= group["accuracy"] <= 1
    assert group["gt_spread"] > 0 and group["discrimination"] == pytest.approx(
        group["cross_error"] - group["self_error"]
    )
    assert report["protocol"]["compared_at"] == "32x32" and report["protocol"]["region"] == "outside_driver"
    table = (tmp_path / "cf" / "counterfactual.md").read_text()
    assert f"| {GROUP} | 2 |" in table and "1 without a group" in table
    assert len(module.calls) == 2  # the clip without a group is not sampled
    assert "test/counterfactual/discrimination" in trainer.callback_metrics


def test_counterfactual_evaluation_scores_the_discs_of_world_clips(module, clips, tmp_path):
    """World clips carry their simulation, so the report also scores where the samples' discs are: the
    truths as samples are right on the discs too, the first frame held still is right only for the member
    whose discs move least (here one of two)."""
    items = [clips[f"synthetic-{GROUP}_v0"], clips[f"synthetic-{GROUP}_v1"]]
    results = {}
    for fake in ("truth", "frozen"):
        out = tmp_path / str(fake)
        callback = CounterfactualEvaluation(num_inference_steps=STEPS, out_dir=str(out), max_side=32)
        trainer = run_test(module, callback, items, tmp_path, fake=fake)
        results[fake] = json.loads((out / "counterfactual.json").read_text())["objects"]["overall"]
        assert "discs" in (out / "counterfactual.md").read_text()
        assert "test/counterfactual/objects_accuracy" in trainer.callback_metrics
    assert results["truth"]["accuracy"] == 1 and results["truth"]["pairwise_accuracy"] == 1
    assert results["frozen"]["accuracy"] == 0.5 and results["frozen"]["members_without_objects"] == 0


def test_force_propagation_regions_and_physics_follow_the_objects(module, clips, tmp_path):
    """With the ground truth as the 'generated' video, errors vanish in every region and the discs are
    where the simulation puts them; with a frozen first frame, the pushed discs are missed."""
    items = [clips[f"synthetic-{GROUP}_v0"]]
    run_test(module, ForcePropagation(out_dir=str(tmp_path / "truth")), items, tmp_path, fake="truth")
    truth = json.loads((tmp_path / "truth" / "force_propagation.json").read_text())["roles"]
    run_test(module, ForcePropagation(out_dir=str(tmp_path / "frozen")), items, tmp_path, fake="frozen")
    frozen = json.loads((tmp_path / "frozen" / "force_propagation.json").read_text())["roles"]
    for role in ("direct", "indirect"):
        assert truth[role]["region_mse"] == 0 and truth[role]["physics_found"] == 1
        assert truth[role]["physics_position_error"] < 1.5
        assert frozen[role]["region_mse"] > 1e-3 and frozen[role]["physics_position_error"] > 3


def _seeds(call: dict[str, Any]) -> list[int]:
    """The per-clip seeds of one ``sample`` call (a list for a batch, an int for one clip)."""
    return list(call["seed"]) if isinstance(call["seed"], (list, tuple)) else [call["seed"]]


def test_callbacks_of_one_test_share_the_samples_of_a_clip(module, clips, tmp_path):
    """The metrics and the counterfactual report sample each clip with the same key seed and steps: the
    second reuses the first one's videos (one sampling per clip), with the same report as when alone;
    other settings (another seed) are sampled anew."""
    # the group's two clips make the first batch (sampled together, as one call, by whichever callback
    # samples first), the clip without a group the second
    items = [clips[f"synthetic-{GROUP}_v0"], clips[f"synthetic-{GROUP}_v1"], clips["synthetic-train-000000"]]
    alone = CounterfactualEvaluation(num_inference_steps=STEPS, out_dir=str(tmp_path / "alone"), max_side=32)
    run_test(module, alone, items, tmp_path)
    assert [len(_seeds(call)) for call in module.calls] == [2]

    metrics = VideoEvaluation(
        metrics=["ssim"], num_inference_steps=STEPS, save_videos=0, out_dir=str(tmp_path / "m")
    )
    shared = CounterfactualEvaluation(
        num_inference_steps=STEPS, out_dir=str(tmp_path / "shared"), max_side=32
    )
    reseeded = CounterfactualEvaluation(
        seed=7, num_inference_steps=STEPS, out_dir=str(tmp_path / "reseeded"), max_side=32
    )
    run_test(module, [metrics, shared, reseeded], items, tmp_path)
    # a batch's clips are sampled in one call, each with its own seed
    seeds = [seed for call in module.calls for seed in _seeds(call)]
    assert len(seeds) == 3 + 2  # every clip once for both callbacks, the grouped ones again for seed 7
    assert [len(_seeds(call)) for call in module.calls] == [2, 2, 1]  # batch 1 for seeds 42 and 7, batch 2
    grouped = [f"synthetic-{GROUP}_v{v}" for v in range(2)]
    expected = [key_seed(42, key) for key in ["synthetic-train-000000", *grouped]]
    assert sorted(seeds) == sorted(expected + [key_seed(7, k) for k in grouped])

    def report(name: str) -> dict[str, Any]:
        return json.loads((tmp_path / name / "counterfactual.json").read_text())["groups"][GROUP]

    assert report("shared") == report("alone")
    assert not SampleMemo.of(module).entries  # nothing is kept for a later run once the test ends
    assert report("reseeded")["self_error"] != report("alone")["self_error"]

"""The counterfactual report, with two stand-in generators: one that follows the control, one that ignores it."""

from __future__ import annotations

import math

import pytest
import torch

from interdyn.metrics.counterfactual import (
    CounterfactualMember,
    counterfactual_report,
    group_metrics,
    masked_mse,
    report_to_markdown,
)

T, H, W, SIDE = 7, 24, 32, 4
DRIVER = torch.tensor([1.0, 0.1, 0.1])
MOTIONS = {"right": (0, 2), "left": (0, -2), "down": (2, 0), "up": (-2, 0)}


def background(seed: int) -> torch.Tensor:
    return 0.2 + 0.6 * torch.rand(3, H, W, generator=torch.Generator().manual_seed(seed))


def driver_masks(dy: int, dx: int, start: tuple[int, int] = (10, 14)) -> torch.Tensor:
    masks = torch.zeros(T, H, W, dtype=torch.bool)
    for t in range(T):
        y, x = start[0] + dy * t, start[1] + dx * t
        masks[t, max(y, 0) : y + SIDE, max(x, 0) : x + SIDE] = True
    return masks


def paint(frame: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, DRIVER[:, None, None], frame)


def ground_truth(bg: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The true video: the driver moves over the background."""
    return torch.stack([paint(bg, m) for m in masks])


# Stand-in generators: (first frame (3, H, W), control masks (T, H, W)) -> video (T, 3, H, W).
def follows_control(first: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Paints the driver where the control says, over the first frame (it cannot know what the driver
    hid, so the driver's start position stays painted: not a perfect model)."""
    return torch.stack([paint(first, m) for m in masks])


def ignores_control(first: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Repeats the first frame."""
    return first.expand(masks.shape[0], -1, -1, -1).clone()


def make_group(generator, seed: int = 0, motions=MOTIONS, samples: int = 0, noise: float = 0.0, region=None):
    bg = background(seed)
    members = []
    noise_gen = torch.Generator().manual_seed(seed + 100)
    for name, (dy, dx) in motions.items():
        masks = driver_masks(dy, dx)
        gt = ground_truth(bg, masks)
        out = generator(gt[0], masks)
        if samples:
            out = torch.stack(
                [out + noise * torch.randn(out.shape, generator=noise_gen) for _ in range(samples)]
            )
        members.append(
            CounterfactualMember(f"scene{seed}-{name}", out, gt, region(masks) if region else None)
        )
    return members


def test_masked_mse_values():
    a = torch.zeros(3, 3, 2, 2)
    b = torch.zeros(3, 3, 2, 2)
    b[0] = 1.0  # frame 0 is shared: ignored
    b[1, :, 0, 0] = 1.0
    assert masked_mse(a, b) == pytest.approx(1 / 8)
    region = torch.zeros(3, 2, 2, dtype=torch.bool)
    region[1:, 0, :] = True
    assert masked_mse(a, b, region) == pytest.approx(1 / 4)
    region[1:] = False
    assert math.isnan(masked_mse(a, b, region))


def test_control_following_generator_discriminates():
    r = group_metrics(make_group(follows_control))
    assert r["accuracy"] == 1.0 and r["chance"] == 0.25
    assert r["self_error"] > 0  # not a perfect model
    assert r["discrimination"] > 1.5 * r["self_error"] > 0
    assert 0.5 < r["spread_ratio"] < 1.5
    assert math.isnan(r["sample_spread"])


def test_control_ignoring_generator_scores_zero():
    r = group_metrics(make_group(ignores_control))
    assert abs(r["discrimination"]) < 1e-9
    assert r["cross_error"] > 0.005
    assert r["spread"] == 0.0 and r["spread_ratio"] == 0.0 and r["gt_spread"] > 0.005
    follow = group_metrics(make_group(follows_control))
    assert follow["discrimination"] > 0.005


def test_sampled_control_ignoring_generator_discriminates_about_zero():
    noisy = group_metrics(make_group(ignores_control, samples=3, noise=0.05))
    follow = group_metrics(make_group(follows_control, samples=3, noise=0.05))
    assert abs(noisy["discrimination"]) < 0.05 * follow["discrimination"]
    assert follow["accuracy"] == 1.0
    # the outcomes differ only as much as two samples of one member do (2 sigma^2)
    assert noisy["sample_spread"] == pytest.approx(2 * 0.05**2, rel=0.1)
    assert noisy["spread"] == pytest.approx(noisy["sample_spread"], rel=0.1)
    assert follow["spread"] > follow["sample_spread"] + 0.5 * follow["gt_spread"]


def test_region_restricts_the_distance():
    def outside_driver(masks):
        return ~masks

    members = make_group(follows_control, region=outside_driver)
    base = group_metrics(members)
    union_of_drivers = torch.stack([m.region for m in members]).logical_not().any(0)
    # change the generated videos wherever some member's driver is: outside the (intersected) region
    changed = [
        CounterfactualMember(
            m.key, torch.where(union_of_drivers[:, None], 0.5, m.generated), m.ground_truth, m.region
        )
        for m in members
    ]
    assert group_metrics(changed) == base
    # and changing pixels inside the region does change the numbers
    inside = [CounterfactualMember(m.key, m.generated.clone(), m.ground_truth, m.region) for m in members]
    inside[0].generated[1:, :, 0, 0] = 0.0
    assert group_metrics(inside)["self_error"] != base["self_error"]
    # the default (no region) sees the changed pixels
    plain = [CounterfactualMember(m.key, m.generated, m.ground_truth) for m in changed]
    assert group_metrics(plain)["self_error"] != base["self_error"]


def test_union_of_regions_and_shared_first_frame():
    members = make_group(follows_control, region=lambda masks: masks)  # region = where the driver is
    union = group_metrics(members, region_mode="union")
    inter = group_metrics(members, region_mode="intersection")
    assert union["accuracy"] == 1.0 and union["discrimination"] > 0
    # the four drivers never overlap after frame 0: their intersection is empty, the group is skipped
    assert math.isnan(inter["self_error"]) and math.isnan(inter["accuracy"])
    report = counterfactual_report({"scene": members})
    assert report["groups"] == {} and report["skipped"] == {"scene": "empty region"}
    assert counterfactual_report({"scene": members}, region_mode="union")["groups"]["scene"] == union
    # frame 0 is never compared
    shifted = [
        CounterfactualMember(
            m.key, torch.cat([1 - m.generated[:1], m.generated[1:]]), m.ground_truth, m.region
        )
        for m in members
    ]
    # (but it is the reference of each video's own motion)
    motion_keys = {"motion", "motion_ratio"}
    moved = group_metrics(shifted, region_mode="union")
    assert {k: v for k, v in moved.items() if k not in motion_keys} == {
        k: v for k, v in union.items() if k not in motion_keys
    }
    assert moved["motion"] != union["motion"]


def test_report_skips_single_member_groups_and_summarises():
    groups = {
        "scene0": make_group(follows_control, seed=0),
        "scene1": make_group(
            follows_control, seed=1, motions={k: MOTIONS[k] for k in ("left", "up", "down")}
        ),
        "lonely": make_group(follows_control, seed=2, motions={"right": MOTIONS["right"]}),
    }
    report = counterfactual_report(groups)
    assert set(report["groups"]) == {"scene0", "scene1"}
    assert report["num_skipped"] == 1 and "lonely" in report["skipped"]
    overall = report["overall"]
    assert overall["groups"] == 2 and overall["members"] == 7
    rows = report["groups"].values()
    assert overall["discrimination"] == pytest.approx(sum(r["discrimination"] for r in rows) / 2)
    assert overall["accuracy"] == 1.0
    assert overall["spread_ratio"] == pytest.approx(overall["spread"] / overall["gt_spread"])
    assert report["groups"]["scene1"]["chance"] == pytest.approx(1 / 3)

    md = report_to_markdown(report)
    lines = md.splitlines()
    assert lines[0].startswith(
        "| group | members | self | cross | discrimination | accuracy | spread ratio |"
    )
    assert any(line.startswith("| scene0 | 4 |") for line in lines)
    assert any(line.startswith("| scene1 | 3 |") for line in lines)
    assert any("overall" in line and "| 7 |" in line for line in lines)
    assert "Skipped 1 group(s): lonely" in md
    assert "lonely |" not in md


def test_pluggable_distance_and_ties():
    members = make_group(follows_control)

    def l1(a, b, region):
        return float((a[1:] - b[1:]).abs().mean())

    r = group_metrics(members, distance=l1)
    assert r["accuracy"] == 1.0 and r["discrimination"] > 0
    assert r["self_error"] != group_metrics(members)["self_error"]
    # a distance that sees no difference: all ground truths tie, the credit is shared (chance level)
    flat = group_metrics(members, distance=lambda a, b, region: 1.0)
    assert flat["accuracy"] == pytest.approx(0.25) and flat["discrimination"] == 0.0


def test_uint8_and_single_videos_are_accepted():
    members = make_group(follows_control)
    as_uint8 = [
        CounterfactualMember(
            m.key, (m.generated * 255).round().byte(), (m.ground_truth * 255).round().byte().numpy()
        )
        for m in members
    ]
    quantised = [
        CounterfactualMember(m.key, (m.generated * 255).round() / 255, (m.ground_truth * 255).round() / 255)
        for m in members
    ]
    a, b = group_metrics(as_uint8), group_metrics(quantised)
    assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k]) for k in a if not math.isnan(a[k]))


def test_bad_inputs_raise():
    members = make_group(follows_control)
    with pytest.raises(ValueError, match="differ in shape"):
        group_metrics(
            [members[0], CounterfactualMember("x", members[1].generated[:, :, :8], members[1].ground_truth)]
        )
    with pytest.raises(ValueError, match="region"):
        group_metrics([members[0], CounterfactualMember("x", members[1].generated, members[1].ground_truth,
                                                        torch.ones(T, 3, 3, dtype=torch.bool))])  # fmt: skip
    with pytest.raises(ValueError, match="region_mode"):
        group_metrics(members, region_mode="xor")
    with pytest.raises(ValueError, match="two members"):
        group_metrics(members[:1])


def constant_member(key: str, sample: float, truth: float) -> CounterfactualMember:
    return CounterfactualMember(key, torch.full((3, 3, 2, 2), sample), torch.full((3, 3, 2, 2), truth))


def mean_abs(a: torch.Tensor, b: torch.Tensor, region: torch.Tensor | None) -> float:
    return float((a[1:] - b[1:]).abs().mean())


def test_pairwise_accuracy_and_separation_bins_by_hand():
    # truths 0, 1, 3 apart by 1 (paths 0-1), 2 (1-2) and 3 (0-2); sample 0 sits nearer truth 1 than its own
    members = [
        constant_member("p0", 0.6, 0.0),
        constant_member("p1", 1.0, 1.0),
        constant_member("p2", 2.4, 3.0),
    ]
    report = counterfactual_report({"g": members}, distance=mean_abs)
    assert report["overall"]["accuracy"] == pytest.approx(2 / 3)
    assert report["overall"]["pairwise_accuracy"] == pytest.approx(5 / 6)
    pairs = {(p["member"], p["other"]): p for p in report["pairs"]}
    assert len(pairs) == 6 and pairs[("p0", "p1")]["correct"] == 0.0 and pairs[("p0", "p2")]["correct"] == 1.0
    assert pairs[("p2", "p0")]["separation"] == pytest.approx(3.0)
    confused = pairs[("p0", "p1")]
    assert confused["self"] == pytest.approx(0.6) and confused["cross"] == pytest.approx(0.4)
    bins = report["by_separation"]
    assert [b["pairs"] for b in bins] == [2, 2, 2]
    assert [(b["separation_from"], b["separation_to"]) for b in bins] == [
        pytest.approx((1.0, 1.0)),
        pytest.approx((2.0, 2.0)),
        pytest.approx((3.0, 3.0)),
    ]
    assert [b["accuracy"] for b in bins] == [0.5, 1.0, 1.0]  # only the closest outcomes are confused
    md = report_to_markdown(report)
    assert "Pairwise accuracy 0.833 (chance 0.5)" in md
    assert "| 1 - 1 | 2 | 0.5 |" in md and "| 3 - 3 | 2 | 1 |" in md


def test_pairwise_accuracy_of_a_model_that_ignores_the_control_is_one_half():
    follow = counterfactual_report({"s": make_group(follows_control)})
    ignore = counterfactual_report({"s": make_group(ignores_control)})
    assert follow["overall"]["pairwise_accuracy"] == 1.0
    # one video for every path: of the pairs (i, j) and (j, i) exactly one is right
    assert ignore["overall"]["pairwise_accuracy"] == pytest.approx(0.5)
    assert len(ignore["pairs"]) == 4 * 3


def test_separation_bins_ties_and_small_counts():
    tie = [constant_member("a", 0.5, 0.0), constant_member("b", 0.5, 1.0)]
    report = counterfactual_report({"g": tie}, distance=mean_abs)
    assert report["overall"]["pairwise_accuracy"] == 0.5  # both pairs tie: half credit each
    assert [b["pairs"] for b in report["by_separation"]] == [1, 1]  # fewer pairs than bins: one bin each
    from interdyn.metrics.counterfactual import separation_bins

    assert separation_bins([]) == []
    nan_pair = {"separation": 1.0, "correct": math.nan}
    assert separation_bins([nan_pair]) == []


def ramp_member(key: str, sample_end: float, truth_end: float) -> CounterfactualMember:
    """A 3-frame video that starts at 0 and holds ``end`` from frame 1 on: it moves by ``end``."""

    def video(end: float) -> torch.Tensor:
        return torch.tensor([0.0, end, end])[:, None, None, None].expand(3, 3, 2, 2).clone()

    return CounterfactualMember(key, video(sample_end), video(truth_end))


@pytest.mark.parametrize(("sample_end", "stiller"), [(0.1, 3), (2.0, 0)])
def test_motion_and_errors_toward_the_stiller_truth(sample_end, stiller):
    # truths move by 1, 0.2 and 0.5; every path's sample moves by sample_end (a model that ignores the control)
    members = [ramp_member(k, sample_end, end) for k, end in (("a", 1.0), ("b", 0.2), ("c", 0.5))]
    report = counterfactual_report({"g": members}, distance=mean_abs)
    overall = report["overall"]
    assert overall["gt_motion"] == pytest.approx((1.0 + 0.2 + 0.5) / 3)
    assert overall["motion"] == pytest.approx(sample_end)
    assert overall["motion_ratio"] == pytest.approx(sample_end / ((1.0 + 0.2 + 0.5) / 3))
    toward = report["errors_toward_stiller"]
    # too little motion: every wrong answer is the stillest truth (b) or the stiller of a and c;
    # too much: every wrong answer is the truth that moves most (a)
    assert toward["wrong"] == 3 and toward["toward_stiller"] == stiller
    assert toward["share"] == pytest.approx(stiller / 3)
    md = report_to_markdown(report)
    assert f"Of the 3 wrong answers, {stiller} chose the truth that moves less" in md


def test_motion_ignores_where_a_driver_started():
    # the truth is still except where a driver sat on frame 0 and left: outside the drivers it does not move
    truth = torch.zeros(3, 3, 4, 4)
    truth[0, :, 0, 0] = 1.0
    region = torch.ones(3, 4, 4, dtype=torch.bool)
    region[0, 0, 0] = False
    members = [CounterfactualMember(k, truth, truth, region) for k in ("a", "b")]
    assert group_metrics(members)["gt_motion"] == 0.0


def world_group(seed: int = 3, paths: int = 3) -> list[dict]:
    """A counterfactual group of the built-in world (one scene, one driver entry, ``paths`` driver paths)
    whose outcomes differ: its frames, colours and simulated disc positions."""
    import numpy as np

    from data_prep.synthetic_world import builtin_world, make_video

    world = builtin_world(64)
    for s in range(seed, seed + 50):
        rng = np.random.default_rng([5, s])
        first = make_video(rng, world, 14, 7.0)
        group = [first] + [
            make_video(rng, world, 14, 7.0, first["scene"], first["entry"]) for _ in range(paths - 1)
        ]
        ends = [v["sim"]["positions"][-1] for v in group]
        travel = [
            np.linalg.norm(v["sim"]["positions"][-1] - v["sim"]["positions"][0], axis=-1).sum() for v in group
        ]
        apart = min(np.abs(a - b).max() for i, a in enumerate(ends) for b in ends[i + 1 :])
        if apart > 4 and len(set(np.round(travel, 3))) == paths:
            return group
    raise AssertionError("no group with distinct outcomes")


def object_members(group: list[dict], samples: list) -> list:
    import numpy as np

    from interdyn.metrics.counterfactual_objects import ObjectMember
    from interdyn.metrics.physics import locate_discs

    colours = [d.colour for d in group[0]["discs"]]
    return [
        ObjectMember(f"v{i}", np.stack([locate_discs(s, colours) for s in sample]), video["sim"]["positions"])
        for i, (video, sample) in enumerate(zip(group, samples, strict=True))
    ]


def test_object_report_ranks_outcomes_by_where_the_discs_are():
    """On a real world group: the truths as samples are all right; the first frame held still is right only
    for the path whose discs move least; each path given another's outcome is always wrong; a sample
    showing no disc is a wrong answer, counted apart."""
    import numpy as np

    from interdyn.metrics.counterfactual import object_report_to_markdown
    from interdyn.metrics.counterfactual_objects import object_report

    group = world_group()
    frames = [v["frames"] for v in group]
    truth = object_report({"g": object_members(group, [[f] for f in frames])})["overall"]
    assert (
        truth["accuracy"] == 1 and truth["pairwise_accuracy"] == 1 and truth["chance"] == pytest.approx(1 / 3)
    )

    # the first frame held still is nearest the outcome whose discs move least: right for that path only
    travel = [
        np.linalg.norm(v["sim"]["positions"] - v["sim"]["positions"][:1], axis=-1).mean() for v in group
    ]
    stillest, busiest = int(np.argmin(travel)), int(np.argmax(travel))
    for k, right in ((stillest, 1.0), (busiest, 2 / 3)):
        samples = [[f[:1].repeat(14, axis=0)] if i == k else [f] for i, f in enumerate(frames)]
        report = object_report({"g": object_members(group, samples)})
        assert report["overall"]["accuracy"] == pytest.approx(right)

    shifted = [[frames[(i + 1) % 3]] for i in range(3)]
    assert object_report({"g": object_members(group, shifted)})["overall"]["accuracy"] == 0

    blank = [[frames[0]], [frames[1]], [frames[2][:, :1, :1].repeat(64, 1).repeat(64, 2)]]
    report = object_report({"g": object_members(group, blank), "alone": object_members(group, blank)[:1]})
    assert report["overall"]["accuracy"] == pytest.approx(2 / 3)
    assert report["overall"]["members_without_objects"] == 1 and "alone" in report["skipped"]
    assert "1 clip(s) show none of their discs" in object_report_to_markdown(report, "discs")


def test_object_report_averages_over_samples():
    """Member a's first sample is nearer b's outcome, its second exactly on its own: averaged over both, a
    is right (the first sample alone would make it wrong); a sample without discs is left out of the mean."""
    import numpy as np

    from interdyn.metrics.counterfactual_objects import ObjectMember, object_report

    expected_a, expected_b = np.zeros((3, 1, 2)), np.full((3, 1, 2), 10.0)
    near_b, on_a, blank = np.full((3, 1, 2), 6.0), np.zeros((3, 1, 2)), np.full((3, 1, 2), np.nan)
    b = ObjectMember("b", expected_b[None], expected_b)
    mean_rule = object_report({"g": [ObjectMember("a", np.stack([near_b, on_a]), expected_a), b]})
    assert mean_rule["groups"]["g"]["accuracy"] == 1.0
    first_only = object_report({"g": [ObjectMember("a", near_b[None], expected_a), b]})
    assert first_only["groups"]["g"]["accuracy"] == 0.5
    with_blank = object_report({"g": [ObjectMember("a", np.stack([blank, on_a]), expected_a), b]})
    assert (
        with_blank["groups"]["g"]["accuracy"] == 1.0 and with_blank["overall"]["members_without_objects"] == 0
    )
    with pytest.raises(ValueError, match="differ in shape"):
        object_report({"g": [ObjectMember("a", on_a[None, :2], expected_a), b]})


SHARED_HELPERS = {"mean_or_nan", "member_order", "nearest_credit", "score_group"}  # used by the three modules


def test_the_report_module_gives_every_public_name_of_the_three():
    """Callers import the counterfactual metrics from interdyn.metrics.counterfactual, whichever of the
    three modules (the group's scoring, the objects', the report) defines them."""
    import inspect

    from interdyn.metrics import counterfactual, counterfactual_group, counterfactual_objects

    for module in (counterfactual_group, counterfactual_objects):
        defined = {
            name
            for name, value in vars(module).items()
            if (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == module.__name__
        }
        constants = {name for name in vars(module) if name.isupper()}
        public = {name for name in defined | constants if not name.startswith("_")} - SHARED_HELPERS
        assert public <= set(counterfactual.__all__), (module.__name__, public - set(counterfactual.__all__))
    assert all(hasattr(counterfactual, name) for name in counterfactual.__all__)

"""The built-in physics dataset: collisions, friction, determinism, counterfactual groups."""

from __future__ import annotations

import io
import json
import math
import tarfile

import numpy as np

from data_prep.synthetic import write_split
from data_prep.synthetic_world import Disc, DriverPath, World, builtin_world, collide, make_video, simulate


def test_equal_discs_head_on_swap_velocities():
    v1, v2 = collide(
        np.array([0.0, 0]), np.array([3.0, 0]), 1.0, np.array([2.0, 0]), np.array([-1.0, 0]), 1.0
    )
    np.testing.assert_allclose(v1, [-1.0, 0])
    np.testing.assert_allclose(v2, [3.0, 0])


def test_oblique_collision_conserves_momentum_and_energy():
    m1, m2 = 2.0, 5.0
    p1, p2 = np.array([0.0, 0.0]), np.array([1.0, 0.7])
    u1, u2 = np.array([4.0, 1.0]), np.array([-1.0, 0.5])
    v1, v2 = collide(p1, u1, m1, p2, u2, m2)
    np.testing.assert_allclose(m1 * v1 + m2 * v2, m1 * u1 + m2 * u2)
    energy = lambda a, b: 0.5 * m1 * a @ a + 0.5 * m2 * b @ b  # noqa: E731
    assert math.isclose(energy(v1, v2), energy(u1, u2))
    assert not np.allclose(v1, u1)


def test_separating_discs_do_not_interact():
    u1, u2 = np.array([-1.0, 0]), np.array([1.0, 0])
    v1, v2 = collide(np.array([0.0, 0]), u1, 1.0, np.array([1.0, 0]), u2, 1.0)
    assert np.array_equal(v1, u1) and np.array_equal(v2, u2)


def test_kinematic_driver_pushes_without_slowing():
    vd, v = collide(np.array([0.0, 0]), np.array([2.0, 0]), math.inf, np.array([1.0, 0]), np.zeros(2), 1.0)
    np.testing.assert_allclose(vd, [2.0, 0])
    np.testing.assert_allclose(v, [4.0, 0])  # elastic bounce off an infinitely heavy body


def test_push_propagates_and_friction_stops_the_discs():
    world = World(height=100, width=400, friction=50.0)
    discs = [Disc("a", [150.0, 50], [0, 0], 10, np.zeros(3)), Disc("b", [200.0, 50], [0, 0], 10, np.zeros(3))]
    driver = DriverPath(
        np.array([100.0, 50]), np.array([1.0, 0]), 80.0, 0.6, 10, "object", np.array([90.0, 50])
    )
    sim = simulate(world, discs, driver, num_frames=100, fps=20.0)
    assert ("driver" in [e[1] for e in sim["events"]]) and any(e[1] == 0 and e[2] == 1 for e in sim["events"])
    assert sim["positions"][-1, 1, 0] > 210  # b moved although the driver never touched it
    np.testing.assert_allclose(sim["velocities"][-1], 0.0, atol=1e-9)  # friction stopped everything


def test_driver_restitution_sets_how_fast_a_pushed_disc_leaves():
    """A disc in front of a kinematic driver leaves at twice the driver's speed with restitution 1, at
    its speed with 0 (pushed along, staying in contact), and in between with the built-in world's 0.3."""
    speeds = {}
    for e in (0.0, 0.3, 1.0):
        world = World(height=100, width=400, friction=0.0, driver_restitution=e)
        discs = [Disc("a", [140.0, 50], [0, 0], 10, np.zeros(3))]
        driver = DriverPath(
            np.array([100.0, 50]), np.array([1.0, 0]), 60.0, math.inf, 10, "object", np.array([90.0, 50])
        )
        sim = simulate(world, discs, driver, num_frames=20, fps=20.0)
        speeds[e] = sim["velocities"][-1, 0, 0]
        gap = sim["positions"][-1, 0, 0] - sim["driver"][-1, 0] - 20  # surface to surface
        if e == 0.0:
            assert abs(gap) < 1.0  # still touching the driver
        else:
            assert gap > 5.0
    np.testing.assert_allclose([speeds[0.0], speeds[0.3], speeds[1.0]], [60.0, 78.0, 120.0], rtol=1e-6)


def test_pushes_move_discs_about_a_latent_cell_per_frame():
    """The world of pushes (driver restitution 0.3, friction 80 px/s^2 at 64 px: "A slower world" in
    experiments/world/README.md) moves the pushed discs at most about 4 px (one cell of the x4 VAE's
    latents) per frame in most clips, against over 6 px in the built-in world's elastic strikes."""

    def fastest(world: World) -> float:
        rng = np.random.default_rng(5)
        videos = [make_video(rng, world, 14, 7.0) for _ in range(40)]
        steps = [np.linalg.norm(np.diff(v["sim"]["positions"], axis=0), axis=-1).max() for v in videos]
        return float(np.median(steps))

    assert fastest(World(64, 64, friction=80.0, driver_restitution=0.3)) < 4.5
    assert fastest(builtin_world(64)) > 6.0


def read_shard(folder):
    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                out[m.name] = tar.extractfile(m).read()
    return out


def test_deterministic_per_seed(tmp_path):
    world = World(height=48, width=64)
    for name in ("a", "b", "c"):
        write_split(
            tmp_path / name,
            "train",
            3,
            seed=0 if name != "c" else 1,
            world=world,
            num_frames=16,
            fps=14.0,
            progress=False,
        )
    a, b, c = (read_shard(tmp_path / n / "train") for n in ("a", "b", "c"))
    for name in a:
        if name.endswith(".json"):
            assert json.loads(a[name]) == json.loads(b[name])
        elif name.endswith(".npz"):
            assert all(
                np.array_equal(x, y)
                for x, y in zip(
                    np.load(io.BytesIO(a[name])).values(), np.load(io.BytesIO(b[name])).values(), strict=True
                )
            )
    assert any(json.loads(a[n]) != json.loads(c[n]) for n in a if n.endswith(".json"))


def test_counterfactual_variants_share_the_first_frame_only():
    rng = np.random.default_rng(5)
    world = World(height=64, width=64)
    first = make_video(rng, world, 20, 14.0)
    other = make_video(rng, world, 20, 14.0, first["scene"], first["entry"])
    assert np.array_equal(first["frames"][0], other["frames"][0])
    assert not np.array_equal(first["frames"][-1], other["frames"][-1])
    assert not np.array_equal(first["control"][-1], other["control"][-1])


def test_metadata_and_masks_follow_the_contract(tmp_path):
    world = World(height=48, width=64)
    write_split(tmp_path, "test", 1, seed=0, world=world, num_frames=16, fps=14.0, variants=2, progress=False)
    files = read_shard(tmp_path / "test")
    meta = json.loads(files["synthetic-test-000000_v1.json"])
    assert meta["group"] == "test-000000" and meta["variant"] == 1 and meta["mask_source"] == "synthetic"
    assert {
        "id",
        "dataset",
        "split",
        "fps",
        "num_frames",
        "height",
        "width",
        "label",
        "template",
        "objects",
    } <= set(meta)
    masks = np.load(io.BytesIO(files["synthetic-test-000000_v1.masks.npz"]))
    assert masks["control"].shape == (16, 48, 64) and masks["control"].dtype == bool
    assert masks["objects"].shape == (len(meta["objects"]), 16, 48, 64)
    assert masks["control"][0].any()  # the driver is visible in the first frame
    index = json.loads((tmp_path / "test" / "index.json").read_text())
    assert index["num_samples"] == 2 and index["shards"] == ["synthetic-test-000000.tar"]


def test_a_rerun_keeps_finished_shards_and_other_settings_replace_the_split(tmp_path):
    common = {"world": World(height=32, width=48), "num_frames": 8, "fps": 14.0, "progress": False}
    write_split(tmp_path, "train", 3, seed=0, shard_size=2, **common)
    shards = sorted((tmp_path / "train").glob("*.tar"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    first = read_shard(tmp_path / "train")
    write_split(tmp_path, "train", 3, seed=0, shard_size=2, **common)  # the same split: nothing redone
    assert [p.stat().st_mtime_ns for p in shards] == stamps
    write_split(tmp_path, "train", 3, seed=1, shard_size=3, **common)  # other settings: a new split
    assert sorted(p.name for p in (tmp_path / "train").glob("*.tar")) == ["synthetic-train-000000.tar"]
    second = read_shard(tmp_path / "train")
    assert second.keys() == first.keys() and second != first
    assert json.loads((tmp_path / "train" / "index.json").read_text())["num_samples"] == 3


def test_builtin_world_flag_writes_the_worlds_physics(tmp_path, capsys):
    import dataclasses

    import pytest

    from data_prep.synthetic import main

    args = ["--out", str(tmp_path), "--size", "32", "32", "--frames", "4", "--train", "2", "--val", "0"]
    assert main([*args, "--test_groups", "0", "--builtin_world"]) == 0
    index = json.loads((tmp_path / "train" / "index.json").read_text())
    assert index["provenance"]["settings"]["world"] == dataclasses.asdict(builtin_world(32))
    with pytest.raises(SystemExit):
        main([*args, "--builtin_world", "--friction", "10"])
    assert "sets the friction" in capsys.readouterr().err


def test_seen_groups_start_from_training_clips(tmp_path, capsys):
    import pytest

    from data_prep.synthetic import main

    common = [
        "--out",
        str(tmp_path),
        "--size",
        "32",
        "32",
        "--frames",
        "6",
        "--val",
        "0",
        "--test_groups",
        "1",
    ]
    assert main([*common, "--train", "3", "--seen_groups", "2"]) == 0
    train, seen, test = (read_shard(tmp_path / s) for s in ("train", "seen", "test"))
    assert sorted(n for n in seen if n.endswith(".json")) == [
        f"synthetic-seen-00000{i}_v{v}.json" for i in range(2) for v in range(3)
    ]

    def physics(files, name):
        meta = json.loads(files[name])
        return meta["driver"], meta["physics"]

    for i in range(2):
        # member 0 of seen group i is training clip i: the same driver path and the same outcome
        assert physics(seen, f"synthetic-seen-00000{i}_v0.json") == physics(
            train, f"synthetic-train-00000{i}.json"
        )
        assert json.loads(seen[f"synthetic-seen-00000{i}_v1.json"])["group"] == f"seen-00000{i}"
        assert physics(seen, f"synthetic-seen-00000{i}_v1.json") != physics(
            train, f"synthetic-train-00000{i}.json"
        )
    # the test groups are seeded on their own
    assert physics(test, "synthetic-test-000000_v0.json") != physics(train, "synthetic-train-000000.json")
    with pytest.raises(SystemExit):
        main([*common, "--train", "1", "--seen_groups", "2"])
    assert "more than the 1 training clips" in capsys.readouterr().err

"""Cached conditioning (``make latents``): the prep pass on real shards, the training decoder, and the
loss being the same with and without the cache."""

from __future__ import annotations

import json
import random
import tarfile
from pathlib import Path

import lightning as L
import pytest
import torch

from data_prep.latents import main as latents_main
from data_prep.latents import parse_args, resolve_settings
from interdyn.contract import to_contract
from interdyn.data import ShardDataModule
from interdyn.data.cache import FIELD, FORMAT_VERSION, CachedClipDecoder, pack_cache, unpack_cache
from interdyn.data.clip_spec import PAPER_CLIP
from interdyn.data.sampling import key_seed
from interdyn.data.shards import ClipDecoder, collate_clips
from interdyn.errors import BatchContractError, ConfigError
from interdyn.models.conditioning import encode_image_latents
from interdyn.training.module import InterDynModule
from interdyn.training.settings import nest_settings
from tests.helpers import REPO_ROOT, TINY_CONTROL_CHANNELS, phase_table

SIZE = 64
CLIP = PAPER_CLIP.with_overrides(height=SIZE, width=SIZE)  # the cache's: centre window, mask-aware crop


def run_latents(shards: Path, out: Path, svd: Path, *extra: str) -> int:
    return latents_main(
        [
            "--shards", str(shards / "*.tar"), "--out", str(out), "--svd", str(svd),
            "--height", str(SIZE), "--width", str(SIZE), "--device", "cpu", "--no_progress", *extra,
        ]
    )  # fmt: skip


def read_samples(shard: Path) -> list[dict]:
    """The shard's samples as WebDataset would group them (key -> field bytes)."""
    samples: dict[str, dict] = {}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, field = member.name.partition(".")
            samples.setdefault(key, {"__key__": key})[field] = tar.extractfile(member).read()
    return list(samples.values())


@pytest.fixture(scope="module")
def cached(tmp_path_factory, synthetic_shards, tiny_svd_folder) -> Path:
    """The training shards with a float32 cache built without image noise augmentation."""
    out = tmp_path_factory.mktemp("cached")
    code = run_latents(
        synthetic_shards / "train",
        out,
        tiny_svd_folder,
        "--noise_aug_strength",
        "0",
        "--store_dtype",
        "float32",
    )
    assert code == 0
    return out


def module(tiny_svd_folder: Path, **kw) -> InterDynModule:
    kw.setdefault("noise_aug_strength", 0.0)
    return InterDynModule(
        **nest_settings(
            {"svd": str(tiny_svd_folder), "conditioning_embedding_out_channels": TINY_CONTROL_CHANNELS, **kw}
        )
    )


def both_batches(shard: Path) -> tuple[dict, dict]:
    """The same samples decoded from frames (center window, mask-aware crop) and from the cache."""
    samples = read_samples(shard)
    plain = ClipDecoder(CLIP)
    cache = CachedClipDecoder(CLIP)
    rng = random.Random(0)
    frames = to_contract(collate_clips([plain(s, rng) for s in samples]))
    cached = to_contract(collate_clips([cache(s, rng) for s in samples]))
    return frames, cached


def test_prep_adds_a_cache_to_every_sample_and_keeps_the_rest(cached, synthetic_shards):
    originals = sorted((synthetic_shards / "train").glob("*.tar"))
    for original in originals:
        before, after = read_samples(original), read_samples(cached / original.name)
        assert [s["__key__"] for s in before] == [s["__key__"] for s in after]
        for old, new in zip(before, after, strict=True):
            assert set(new) == set(old) | {FIELD}
            assert all(new[k] == old[k] for k in old)  # video, masks and json untouched
            cache = unpack_cache(new[FIELD])
            assert cache["latent_mean"].shape == (14, 4, SIZE // 8, SIZE // 8)
            assert cache["control"].shape == (14, SIZE, SIZE) and cache["control"].any()
            assert cache["settings"]["noise_aug_strength"] == 0.0
    records = list((cached / "_latents").glob("*.json"))
    assert len(records) == len(originals)
    assert all(json.loads(r.read_text())["counts"]["cached"] > 0 for r in records)


def test_cached_and_encoded_conditioning_give_the_same_loss(cached, tiny_svd_folder):
    """The acceptance test of the cache: same batch, same noise level and noise -> the same loss.

    Tolerance: float32 storage leaves only the order of floating-point operations: 1e-5 relative."""
    model = module(tiny_svd_folder)
    frames, cache_batch = both_batches(next(cached.glob("*.tar")))
    assert torch.equal(frames["control"], cache_batch["control"])
    sigma = torch.tensor([0.3, 1.5, 4.0, 12.0])[: frames["control"].shape[0]]
    control, cache = model._checked_cache(cache_batch)
    with torch.no_grad():
        uncached = model.compute_loss(
            frames["pixel_values"], frames["control"], sigma=sigma, generator=torch.Generator().manual_seed(5)
        )
        from_cache = model.compute_loss(
            None, control, sigma=sigma, generator=torch.Generator().manual_seed(5), cache=cache
        )
        other_noise = model.compute_loss(
            None, control, sigma=sigma, generator=torch.Generator().manual_seed(6), cache=cache
        )
    assert from_cache.item() == pytest.approx(uncached.item(), rel=1e-5)
    assert abs(other_noise.item() - uncached.item()) > 1e-4  # the comparison can fail


def test_float16_cache_is_close(tmp_path, synthetic_shards, tiny_svd_folder):
    """float16 storage (the default, half the disk) keeps the loss within 1e-3 relative."""
    assert (
        run_latents(synthetic_shards / "train", tmp_path, tiny_svd_folder, "--noise_aug_strength", "0") == 0
    )
    model = module(tiny_svd_folder)
    frames, cache_batch = both_batches(next(tmp_path.glob("*.tar")))
    control, cache = model._checked_cache(cache_batch)
    sigma = torch.ones(control.shape[0])
    with torch.no_grad():
        a = model.compute_loss(
            frames["pixel_values"], frames["control"], sigma=sigma, generator=torch.Generator().manual_seed(1)
        )
        b = model.compute_loss(
            None, control, sigma=sigma, generator=torch.Generator().manual_seed(1), cache=cache
        )
    assert b.item() == pytest.approx(a.item(), rel=1e-3)


def test_image_latent_uses_a_fixed_noise_draw_per_sample(tmp_path, synthetic_shards, tiny_svd_folder):
    assert run_latents(synthetic_shards / "train", tmp_path, tiny_svd_folder, "--store_dtype", "float32") == 0
    model = module(tiny_svd_folder, noise_aug_strength=0.02)
    frames, cache_batch = both_batches(next(tmp_path.glob("*.tar")))
    for i, key in enumerate(cache_batch["key"]):
        generator = torch.Generator().manual_seed(key_seed(0, key))
        with torch.no_grad():
            expected = encode_image_latents(model.vae, frames["pixel_values"][i : i + 1, 0], 0.02, generator)[
                0
            ]
        torch.testing.assert_close(cache_batch["image_latents"][i], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="noise_aug_strength"):
        module(tiny_svd_folder, noise_aug_strength=0.05)._checked_cache(cache_batch)


def test_rerun_skips_done_shards_and_refuses_other_settings(
    tmp_path, cached, synthetic_shards, tiny_svd_folder, capsys
):
    stamp = {p.name: p.stat().st_mtime_ns for p in cached.glob("*.tar")}
    args = ("--noise_aug_strength", "0", "--store_dtype", "float32")
    assert run_latents(synthetic_shards / "train", cached, tiny_svd_folder, *args) == 0
    assert "cached 0 samples" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in cached.glob("*.tar")} == stamp
    assert (
        run_latents(synthetic_shards / "train", cached, tiny_svd_folder, "--noise_aug_strength", "0.1") == 2
    )
    assert "--overwrite" in capsys.readouterr().err
    assert run_latents(synthetic_shards / "bad", tmp_path, tiny_svd_folder) == 2
    assert "no shards match" in capsys.readouterr().err


def test_datamodule_trains_from_the_cache(cached, tiny_svd_folder, tmp_path):
    data = ShardDataModule(
        train_shards=str(cached / "*.tar"), clip=CLIP,
        batch_size=2, num_workers=0, epoch_samples=4, cached_conditioning=True, shuffle_buffer=1,
    )  # fmt: skip
    assert data._cached_decoder(str(cached / "*.tar")).clip is data.clip  # the clip given once
    batch = to_contract(next(iter(data.train_dataloader())))
    assert "pixel_values" not in batch and batch["latent_mean"].shape == (2, 14, 4, 8, 8)
    model = module(tiny_svd_folder)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    before = {k: v.clone() for k, v in model.controlnet.state_dict().items()}
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 2
    assert any(not torch.equal(v, model.controlnet.state_dict()[k]) for k, v in before.items())


def test_datamodule_refuses_a_cache_for_other_clips(cached, synthetic_shards):
    wrong_size = ShardDataModule(
        train_shards=str(cached / "*.tar"), clip={"height": 128, "width": SIZE}, cached_conditioning=True
    )
    with pytest.raises(ConfigError, match="height: cache 64 vs data 128"):
        wrong_size.train_dataloader()
    wrong_frames = ShardDataModule(  # a clip of the paper's but for one field: the check names that field
        train_shards=str(cached / "*.tar"), clip=CLIP.with_overrides(num_frames=4), cached_conditioning=True
    )
    with pytest.raises(ConfigError, match=r"other clips \(num_frames: cache 14 vs data 4\)"):
        wrong_frames.train_dataloader()
    no_cache = ShardDataModule(
        train_shards=str(synthetic_shards / "train" / "*.tar"), cached_conditioning=True
    )
    with pytest.raises(ConfigError, match="make latents"):
        no_cache.train_dataloader()


def test_cached_batches_from_another_svd_are_refused(cached, tiny_svd_folder):
    model = module(tiny_svd_folder)
    _, cache_batch = both_batches(next(cached.glob("*.tar")))
    wrong = {**cache_batch, "image_embeds": torch.zeros(*cache_batch["image_embeds"].shape[:2], 7)}
    with pytest.raises(BatchContractError, match="another SVD"):
        model._checked_cache(wrong)
    wrong = {**cache_batch, "latent_std": cache_batch["latent_std"][:, :-1]}
    with pytest.raises(BatchContractError, match="latent_std"):
        model._checked_cache(wrong)


def test_a_cache_of_an_older_format_is_refused(cached):
    """Caches written before SVD's exact CLIP preprocessing (format 1) hold other embeddings: refused."""
    sample = read_samples(next(cached.glob("*.tar")))[0]
    data = unpack_cache(sample[FIELD])
    assert data["settings"]["version"] == FORMAT_VERSION
    old = pack_cache(
        data["latent_mean"], data["latent_std"], data["image_latent"], data["image_embed"], data["control"],
        data["indices"].tolist(), {**data["settings"], "version": 1},
    )  # fmt: skip
    with pytest.raises(ConfigError, match="format version 1.*rebuild it"):
        CachedClipDecoder(CLIP)({**sample, FIELD: old}, random.Random(0))


def test_parts_cache_the_bytes_of_one_process(
    cached, synthetic_shards, tiny_svd_folder, tmp_path, capsys, monkeypatch
):
    """Two parts (in the reverse order) write the shards and latents.json of the one-process run; the
    report is refused while a part's shards are missing, and names them."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "parts"
    args = ("--noise_aug_strength", "0", "--store_dtype", "float32")
    assert run_latents(synthetic_shards / "train", out, tiny_svd_folder, *args, "--part", "1/2") == 0
    assert "videos/s" in capsys.readouterr().out and not (out / "latents.json").exists()
    assert run_latents(synthetic_shards / "train", out, tiny_svd_folder, *args, "--finalize") == 2
    first = sorted(p.name for p in synthetic_shards.glob("train/*.tar"))[0]
    assert f"0 ({first})" in capsys.readouterr().err
    assert run_latents(synthetic_shards / "train", out, tiny_svd_folder, *args, "--part", "0/2") == 0
    one = {p.name: p.read_bytes() for p in cached.iterdir() if p.is_file()}
    assert sorted(one) == sorted([*(p.name for p in synthetic_shards.glob("train/*.tar")), "latents.json"])
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == one
    assert json.loads(one["latents.json"])["counts"]["cached"] == 8


def test_the_run_ends_with_its_time_by_phase(synthetic_shards, tiny_svd_folder, tmp_path, capsys):
    """One part of two (one shard of 4 clips): every phase with its seconds, the encoding's samples/s, and
    the phases adding up to the total."""
    capsys.readouterr()
    assert run_latents(synthetic_shards / "train", tmp_path, tiny_svd_folder, "--part", "0/2") == 0
    printed = capsys.readouterr().out
    assert printed.count("time by phase") == 1
    title, rows = phase_table(printed)
    assert title == "data_prep.latents part 0/2"
    assert list(rows) == [
        "start-up (imports, arguments)", "planning (settings, shard list)", "loading the encoders",
        "reading shards", "decoding clips", "encoding (VAE, CLIP)", "writing shards", "latents.json", "total",
    ]  # fmt: skip
    assert rows["reading shards"][1] == "1 shard" and rows["decoding clips"][1] == "4 videos"
    seconds, note = rows["encoding (VAE, CLIP)"]
    assert seconds > 0 and note.startswith("4 samples, ") and note.endswith(" samples/s")
    assert rows["loading the encoders"][0] >= 0  # the tiny encoders may load within the table's 0.1 s
    phases = sum(s for name, (s, _) in rows.items() if name != "total")
    assert "other" not in rows and abs(phases - rows["total"][0]) <= 0.06 * len(rows) + 0.05 * phases + 0.2


def test_settings_come_from_the_configs_as_fit_reads_them(tmp_path, synthetic_shards):
    """The configs are read by the CLI's own parser: an overlay after its base wins, DataModule defaults
    fill what neither names, and explicit flags win over both."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        f"data:\n  init_args:\n    clip:\n      width: 256\n    train_shards: {synthetic_shards / 'train' / '*.tar'}\n"
    )
    base = [REPO_ROOT / "configs" / "ssv2.yaml"]
    settings, svd, urls = resolve_settings(parse_args(["--config", str(base[0]), "--config", str(overlay)]))
    assert (settings["height"], settings["width"], settings["num_frames"], settings["crop"]) == (
        256, 256, 14, "mask_aware",
    )  # fmt: skip
    assert svd == "stabilityai/stable-video-diffusion-img2vid" and settings["noise_aug_strength"] == 0.02
    assert urls and all(u.startswith(str(synthetic_shards / "train")) for u in urls)
    flags = ["--config", str(base[0]), "--config", str(overlay), "--width", "320", "--svd", "random:tiny"]
    settings, svd, _ = resolve_settings(parse_args(flags))
    assert settings["width"] == 320 and svd == "random:tiny"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_settings(parse_args(["--config", str(tmp_path / "missing.yaml")]))
    # a misspelt key is refused, as `interdyn fit` refuses it, rather than left out of the cache settings
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  init_args:\n    widht: 256\n")
    with pytest.raises(ConfigError, match="widht"):
        resolve_settings(parse_args(["--config", str(base[0]), "--config", str(typo)]))
    # a config written for the flat clip settings is refused with one sentence saying where they went
    flat = tmp_path / "flat.yaml"
    flat.write_text("data:\n  init_args:\n    width: 256\n")
    with pytest.raises(ConfigError, match=r"data.init_args.width, which is now data.init_args.clip.width"):
        resolve_settings(parse_args(["--config", str(base[0]), "--config", str(flat)]))
    # a config of the Wan backbone's module caches its VAE's latents, for its clip; SVD's options are refused
    wan = [
        "--config",
        str(REPO_ROOT / "configs" / "wan_ssv2.yaml"),
        "--shards",
        str(synthetic_shards / "train" / "*.tar"),
    ]
    settings, source, _ = resolve_settings(parse_args(wan))
    assert (settings["backbone"], settings["num_frames"], source) == (
        "wan",
        49,
        "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
    )
    assert "noise_aug_strength" not in settings and settings["wan"] == source
    with pytest.raises(ValueError, match="--svd is for SVD's cache"):
        resolve_settings(parse_args([*wan, "--svd", "random:tiny"]))
    with pytest.raises(ValueError, match="the data's clip has 14 frames"):
        resolve_settings(parse_args([*wan, "--num_frames", "14"]))
    with pytest.raises(ValueError, match="the data's clip is 48x64 pixels"):
        resolve_settings(parse_args([*wan, "--height", "48", "--width", "64"]))
    with pytest.raises(ValueError, match="--vae_chunk_size is for SVD's cache"):
        resolve_settings(parse_args([*wan, "--vae_chunk_size", "8"]))
    with pytest.raises(ValueError, match="--wan caches the Wan backbone's latents"):
        resolve_settings(parse_args(["--config", str(base[0]), "--wan", "random:wan-tiny"]))


WAN_CLIP = CLIP.with_overrides(num_frames=5)  # Wan's 1 + 4k frames; 64 pixels: 2 x 2 tokens


@pytest.fixture(scope="module")
def wan_cached(tmp_path_factory, synthetic_shards) -> Path:
    """The training shards with a float32 cache of the tiny Wan's latents, made from a Wan config."""
    folder = tmp_path_factory.mktemp("wan_cached")
    config = folder / "wan.yaml"
    config.write_text(
        "model:\n  class_path: interdyn.training.wan_module.InterDynWanModule\n"
        "  init_args:\n    wan: random:wan-tiny\n"
        "data:\n  class_path: interdyn.data.ShardDataModule\n  init_args:\n"
        f"    train_shards: {synthetic_shards / 'train' / '*.tar'}\n"
        f"    clip: {{num_frames: 5, height: {SIZE}, width: {SIZE}}}\n"
    )
    out = folder / "shards"
    argv = ["--config", str(config), "--out", str(out), "--store_dtype", "float32", "--device", "cpu"]
    assert latents_main([*argv, "--no_progress"]) == 0
    return out


def wan_module(**kw):
    from tests.training.wan.helpers import tiny_wan_module

    return tiny_wan_module(layers="first:1", **kw)


def test_a_wan_config_caches_the_latents_its_training_step_encodes(wan_cached, tmp_path):
    """``make latents`` with a Wan config: every sample gets the Wan VAE's latents of its clip, equal to what
    the Wan module's step encodes from the frames; the loss is the same from either; training from the cache
    never runs the VAE."""
    shard = next(wan_cached.glob("*.tar"))
    samples = read_samples(shard)
    cache = unpack_cache(samples[0][FIELD])
    assert cache["settings"]["backbone"] == "wan" and cache["wan_latents"].shape == (
        48,
        2,
        SIZE // 16,
        SIZE // 16,
    )
    rng = random.Random(0)
    frames = to_contract(collate_clips([ClipDecoder(WAN_CLIP)(s, rng) for s in samples]))
    cached = to_contract(collate_clips([CachedClipDecoder(WAN_CLIP)(s, rng) for s in samples]))
    assert torch.equal(frames["control"], cached["control"]) and "pixel_values" not in cached
    model = wan_module()
    control, latents = model._checked_cache(cached)
    encoded, image_latents = model.encode(frames["pixel_values"])
    torch.testing.assert_close(latents, encoded, rtol=1e-5, atol=1e-5)
    sigma = torch.tensor([0.2, 0.5, 0.8, 0.9])[: control.shape[0]]
    args = (model.transformer, latents, latents[:, :, :1], model.prompt_embeds, model.controlnet, control)
    with torch.no_grad():
        from_cache = model.flow.compute_loss(
            *args, generator=torch.Generator().manual_seed(5), sigma=sigma
        ).loss
        from_frames = model.flow.compute_loss(
            model.transformer, encoded, image_latents, model.prompt_embeds, model.controlnet, frames["control"],
            generator=torch.Generator().manual_seed(5), sigma=sigma,
        ).loss  # fmt: skip
        other = model.flow.compute_loss(*args, generator=torch.Generator().manual_seed(6), sigma=sigma).loss
    assert from_cache.item() == pytest.approx(from_frames.item(), rel=1e-5)
    assert abs(other.item() - from_frames.item()) > 1e-5  # the comparison can fail

    def no_vae(*args, **kwargs):
        raise AssertionError("training from the cache ran the VAE")

    model.vae.encode = no_vae
    data = ShardDataModule(
        train_shards=str(wan_cached / "*.tar"), clip=WAN_CLIP, batch_size=2, num_workers=0, epoch_samples=4,
        cached_conditioning=True, shuffle_buffer=1,
    )  # fmt: skip
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    before = {k: v.clone() for k, v in model.controlnet.state_dict().items()}
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 2
    assert any(not torch.equal(v, model.controlnet.state_dict()[k]) for k, v in before.items())


def test_a_cache_of_the_other_backbone_is_one_sentence(wan_cached, cached, tiny_svd_folder):
    rng = random.Random(0)
    wan_batch = to_contract(
        collate_clips(
            [CachedClipDecoder(WAN_CLIP)(s, rng) for s in read_samples(next(wan_cached.glob("*.tar")))]
        )
    )
    with pytest.raises(ConfigError, match="holds the Wan VAE's latents, not SVD's"):
        module(tiny_svd_folder).training_step(wan_batch, 0)
    _, svd_batch = both_batches(next(cached.glob("*.tar")))
    with pytest.raises(ConfigError, match="holds SVD's latents and CLIP embeddings, not the Wan VAE's"):
        wan_module().training_step(svd_batch, 0)
    with pytest.raises(BatchContractError, match="wan_latents"):
        wan_module()._checked_cache({**wan_batch, "wan_latents": wan_batch["wan_latents"][:, :, :1]})


def test_offloaded_wan_vae_trains_from_the_cache_and_still_validates(wan_cached, synthetic_shards, tmp_path):
    """``memory.offload_encoders`` on Wan: the VAE is out of the module (its state dict, Lightning's device
    moves), training reads the cache, validation still encodes the videos with it; a batch of frames in
    training is one sentence."""
    model = wan_module(memory={"offload_encoders": True})
    assert not any(k.startswith("vae.") for k in model.state_dict()) and model.vae is not None
    data = ShardDataModule(
        train_shards=str(wan_cached / "*.tar"), val_shards=str(synthetic_shards / "validation" / "*.tar"),
        clip=WAN_CLIP, batch_size=2, num_workers=0, epoch_samples=4, cached_conditioning=True, shuffle_buffer=1,
    )  # fmt: skip
    validated = []
    real_encode = model.encode
    model.encode = lambda pixels: validated.append(len(pixels)) or real_encode(pixels)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 2 and validated == [2], "training read the cache, validation the frames"
    assert "val/loss" in trainer.callback_metrics
    rng = random.Random(0)
    frames = to_contract(
        collate_clips([ClipDecoder(WAN_CLIP)(s, rng) for s in read_samples(next(wan_cached.glob("*.tar")))])
    )
    with pytest.raises(ConfigError, match="offload_encoders trains on cached latents only"):
        model.training_step(frames, 0)

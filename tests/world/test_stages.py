"""The world's SVD stages end to end on a few steps: the shipped stage configs run through
``interdyn world fit`` (shrunk), and what they write loads as SVD img2vid in diffusers and in interdyn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from interdyn.commands.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _config(name: str, tmp: Path, shards: Path, **model: object) -> Path:
    """The shipped stage config, shrunk to 2 steps and pointed at ``tmp`` and the test shards."""
    cfg = yaml.safe_load((ROOT / "configs/world" / name).read_text())
    cfg["trainer"].update(max_steps=2, val_check_interval=2, limit_val_batches=1, log_every_n_steps=1)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp / "runs")
    cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(tmp / f"ckpt_{name}")
    cfg["model"]["init_args"].update(model)
    data = cfg["data"]["init_args"]
    data.update(
        train_shards=str(shards / "train/*.tar"),
        val_shards=str(shards / "validation/*.tar"),
        batch_size=1,
        num_workers=0,
        epoch_samples=4,
    )
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_stages_write_an_svd_folder_that_diffusers_and_interdyn_load(
    synthetic_shards: Path, tmp_path: Path
) -> None:
    from diffusers import AutoencoderKLTemporalDecoder, StableVideoDiffusionPipeline

    vae_dir, svd_dir = tmp_path / "vae", tmp_path / "svd"
    vae_arch = {
        "block_out_channels": [32, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "layers_per_block": 1,
        "latent_channels": 4,
        "sample_size": 64,
    }
    main(
        [
            "world",
            "fit",
            "--config",
            str(_config("vae.yaml", tmp_path, synthetic_shards, vae=vae_arch, out=str(vae_dir))),
        ]
    )
    vae = AutoencoderKLTemporalDecoder.from_pretrained(vae_dir)
    # the scaling factor was measured: scaled latents of training clips have unit spread
    assert vae.config.scaling_factor != 0.18215 and np.isfinite(vae.config.scaling_factor)

    main(
        [
            "world",
            "fit",
            "--config",
            str(_config("base.yaml", tmp_path, synthetic_shards, vae=str(vae_dir), out=str(svd_dir))),
        ]
    )
    for part in ("unet", "vae", "image_encoder", "scheduler", "feature_extractor", "model_index.json"):
        assert (svd_dir / part).exists(), part
    assert not list(tmp_path.glob(".svd.tmp-*"))  # written through a temporary folder

    pipe = StableVideoDiffusionPipeline.from_pretrained(svd_dir, torch_dtype=torch.float32)
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    frames = pipe(
        image,
        height=64,
        width=64,
        num_frames=14,
        num_inference_steps=2,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).frames
    assert frames.shape == (1, 14, 3, 64, 64) and torch.isfinite(frames).all()

    from interdyn.training.module import InterDynModule

    module = InterDynModule(svd=str(svd_dir), conditioning_embedding_out_channels=(8, 16, 32))
    video = torch.rand(1, 14, 3, 64, 64) * 2 - 1
    control = -torch.ones(1, 14, 3, 64, 64)
    loss = module.compute_loss(video, control, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_vae_stage_learns_to_reconstruct(synthetic_shards: Path) -> None:
    """A few optimiser steps on one batch of world clips lower the reconstruction error."""
    from data_prep.synthetic import World, make_video
    from interdyn.world import VAEModule

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    frames = np.stack([make_video(rng, World(32, 32, friction=20.0), 4, 7.0)["frames"] for _ in range(2)])
    video = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    module = VAEModule(
        {
            "block_out_channels": [32, 32],
            "down_block_types": ["DownEncoderBlock2D"] * 2,
            "latent_channels": 4,
        },
        train_frames=None,
    )
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3)

    def error() -> float:
        with torch.no_grad():
            return float(((module.reconstruct(video, sample=False)[0] - video) ** 2).mean())

    before = error()
    for _ in range(15):
        loss, _ = module._loss(video, sample=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert error() < 0.5 * before


def test_the_branch_phases_compose_on_the_demo_config(synthetic_shards: Path) -> None:
    """`make world-branch`'s two phases parse on configs/demo.yaml: the second starts from the first's
    exported weights at a lower learning rate and keeps its own run and checkpoint folders, so it neither
    resumes from nor overwrites the first phase's checkpoints."""
    import lightning as L

    from interdyn.commands.cli import InterDynCLI
    from interdyn.training.module import InterDynModule

    def parse(config: str, *extra: str) -> InterDynCLI:
        args = [
            "--config", str(ROOT / "configs/demo.yaml"), "--config", str(ROOT / "configs/world" / config),
            "--model.svd", str(ROOT / "weights/world/svd"),
            "--data.init_args.train_shards", str(synthetic_shards / "train/*.tar"),
            "--data.init_args.num_workers", "0",
            *extra,
        ]  # fmt: skip
        return InterDynCLI(
            InterDynModule, L.LightningDataModule, subclass_mode_data=True, run=False, args=args
        )

    first = parse("branch.yaml")
    second = parse("branch_anneal.yaml", "--model.controlnet", str(ROOT / "weights/world/branch"))
    assert second.model.hparams.learning_rate < first.model.hparams.learning_rate
    shipped = second.model.controlnet.state_dict()
    assert any(
        v.abs().sum() > 0 for k, v in shipped.items() if "controlnet_down_blocks" in k
    )  # not zero-init
    dirs = [
        c.dirpath
        for cli in (first, second)
        for c in cli.trainer.callbacks
        if isinstance(c, L.pytorch.callbacks.ModelCheckpoint)
    ]
    assert len(set(dirs)) == 2
    assert first.trainer.logger.name != second.trainer.logger.name


def test_base_stage_fine_tunes_from_an_svd_folder() -> None:
    """``init_from`` starts the UNet (and its average) and the CLIP encoder from a written SVD folder (the
    shipped one), and refuses a folder whose UNet has another architecture."""
    import pytest
    from diffusers import UNetSpatioTemporalConditionModel

    from interdyn.errors import ConfigError
    from interdyn.world import BaseVideoModule

    svd = ROOT / "weights/world/svd"
    args = yaml.safe_load((ROOT / "configs/world/base.yaml").read_text())["model"]["init_args"]
    args.update(vae=str(svd / "vae"), out=None)
    fresh = BaseVideoModule(**args)
    tuned = BaseVideoModule(**args, init_from=str(svd))
    shipped = UNetSpatioTemporalConditionModel.from_pretrained(svd, subfolder="unet").state_dict()
    for name, value in tuned.unet.state_dict().items():
        assert torch.equal(value, shipped[name].float()), name
        assert value.dtype == torch.float32
    assert any(not torch.equal(v, shipped[k].float()) for k, v in fresh.unet.state_dict().items())
    assert all(
        torch.equal(a, b) for a, b in zip(tuned.ema.parameters(), tuned.unet.parameters(), strict=True)
    )

    args["unet"] = {**args["unet"], "block_out_channels": [32, 64, 64, 64]}
    with pytest.raises(ConfigError, match="architecture"):
        BaseVideoModule(**args, init_from=str(svd))

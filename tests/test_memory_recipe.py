"""The switches of the 24 GB training recipe (configs/ssv2_24gb.yaml) on the tiny model: gradient
accumulation equals the full batch, finer activation checkpointing keeps the step and saves fewer
buffers, and offloaded encoders stay off the device while cached conditioning feeds the steps."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from data_prep.latents import main as latents_main
from interdyn.commands.cli import InterDynCLI
from interdyn.commands.cli import main as cli_main
from interdyn.data.toy import MovingShapesDataset
from interdyn.errors import ConfigError
from interdyn.training.module import InterDynModule
from interdyn.training.optim_offload import HostMoments, OffloadedAdam
from interdyn.training.settings import nest_settings
from tests.helpers import REPO_ROOT, TINY_ARCHITECTURE, TINY_CONTROL_CHANNELS, randomize_


class SeededPerSample(InterDynModule):
    """Draws each sample's randomness from a generator seeded by its key, and records what the
    optimizer would see: the loss of every micro-batch and the accumulated branch gradient."""

    def training_step(self, batch, batch_idx):
        pixel_values, control = self._checked(batch)
        generators = [torch.Generator().manual_seed(zlib.crc32(k.encode())) for k in batch["key"]]
        loss = self.compute_loss(pixel_values, control, generator=generators, drop_image=True)
        self.__dict__.setdefault("losses", []).append((loss.detach(), control.shape[0]))
        return loss

    def on_before_optimizer_step(self, optimizer):
        self.__dict__["grads"] = torch.cat([p.grad.flatten() for p in self.controlnet.parameters()])


def fit_one_step(batches: list[dict], accumulate: int, precision: str = "32-true") -> SeededPerSample:
    module = SeededPerSample(
        svd={**TINY_ARCHITECTURE, "seed": 0},
        conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS,
        # some samples dropped, some kept: the drop must follow the sample
        objective={"image_drop_prob": 0.5},
    )
    randomize_(module.controlnet, seed=5)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=1, accumulate_grad_batches=accumulate, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, precision=precision,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return module


def split(batch: dict, size: int) -> list[dict]:
    n = len(batch["key"])
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, n, size)]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def square_batch(size: int, frames: int) -> dict:
    data = MovingShapesDataset(4, num_frames=frames, height=size, width=size, seed=3)
    items = [data[i] for i in range(4)]
    return {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "control": torch.stack([it["control"] for it in items]),
        "key": [it["key"] for it in items],
    }


@pytest.mark.parametrize(
    "precision, size, frames",
    [
        ("64-true", 64, 2),
        pytest.param("32-true", 128, 4, marks=pytest.mark.slow),
    ],
)
def test_gradient_accumulation_equals_the_full_batch(precision, size, frames):
    """``accumulate_grad_batches: 2`` over micro-batches of 2 is one batch of 4: the same loss and the
    same branch gradient when each sample draws its noise level, noise and image drop as it would in
    the full batch (per-sample generators). Float64 shows the equivalence itself (~1e-11). In float32,
    batch-size dependent kernels round differently (~1e-7) and this tiny model's deepest levels,
    GroupNorm over 1x1 feature maps at 64x64 frames, amplify that up to 1e-1; at 128x128 the maps are
    2x2 and the float32 gap is ~1e-6 (reordering the samples of one batch alone moves it by 5e-7)."""
    batch = square_batch(size, frames)
    full = fit_one_step([batch], accumulate=1, precision=precision)
    micro = fit_one_step(split(batch, 2), accumulate=2, precision=precision)
    assert [n for _, n in micro.losses] == [2, 2]
    assert full.grads.dtype == (torch.float64 if precision == "64-true" else torch.float32)
    micro_loss = torch.stack([loss for loss, _ in micro.losses]).mean()
    assert relative(micro_loss, full.losses[0][0]) < 1e-6
    assert full.grads.abs().max() > 0
    assert relative(micro.grads, full.grads) < (1e-6 if precision == "64-true" else 2e-6)


class SavedBytes:
    """Adds up the bytes of the buffers autograd saves for the backward pass (each storage once)."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: dict[int, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        storage = x.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen[storage.data_ptr()] = x  # held so that the address is not reused while counting
            self.bytes += storage.nbytes()
        return x


def step(module: InterDynModule, batch: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    module.train()
    module.controlnet.zero_grad(set_to_none=True)
    saved = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(saved, lambda x: x):
        loss = module.compute_loss(
            batch["pixel_values"], batch["control"], sigma=torch.tensor([0.7, 3.0]),
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in module.controlnet.parameters()])
    return loss.detach(), grads, saved.bytes


def tiny(**kw) -> InterDynModule:
    module = InterDynModule(
        **nest_settings(
            {
                "svd": {**TINY_ARCHITECTURE, "seed": 0},
                "conditioning_embedding_out_channels": TINY_CONTROL_CHANNELS,
                **kw,
            }
        )
    )
    randomize_(module.controlnet, seed=5)
    return module


def test_fine_checkpointing_gives_the_same_step_and_saves_less():
    batch = {k: v[:2] for k, v in square_batch(64, 2).items()}
    both = {"gradient_checkpointing": True, "unet_gradient_checkpointing": True}
    loss, grads, coarse = step(tiny(**both), batch)
    fine_module = tiny(**both, fine_checkpointing=True)
    fine_loss, fine_grads, fine = step(fine_module, batch)
    torch.testing.assert_close(fine_loss, loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(fine_grads, grads, rtol=1e-5, atol=1e-7)
    # every spatio-temporal layer of the branch and of the UNet keeps only its input
    assert fine < 0.8 * coarse, (fine, coarse)
    assert fine_module.state_dict().keys() == tiny().state_dict().keys()


def cached_batch(module: InterDynModule, batch: dict) -> dict:
    """The batch as cached conditioning hands it over (``make latents``), made with the module's encoders."""
    from interdyn.models.conditioning import clip_image_embeds, encode_image_latents, encode_video_posterior

    with torch.no_grad():
        mean, std = encode_video_posterior(module.vae, batch["pixel_values"])
        first = batch["pixel_values"][:, 0]
        return {
            "control": batch["control"],
            "key": batch["key"],
            "latent_mean": mean,
            "latent_std": std,
            "image_latents": encode_image_latents(module.vae, first, module.sampling.noise_aug_strength),
            "image_embeds": clip_image_embeds(module.image_encoder, first),
        }


def test_offloaded_encoders_stay_off_the_device_and_out_of_the_step():
    module = tiny(offload_encoders=True)
    names = {n.split(".")[0] for n in module.state_dict()}
    assert names == {"unet", "controlnet"}, "the encoders are not part of the device-bound module"
    batch = {k: v[:2] for k, v in square_batch(64, 2).items()}
    cached = cached_batch(module, batch)

    calls = []
    for part in (module.vae.encoder, module.image_encoder):
        part.register_forward_pre_hook(lambda *_: calls.append(1))
    loss = module.training_step(cached, 0)
    loss.backward()
    assert torch.isfinite(loss) and not calls, "a cached training step runs neither the VAE nor CLIP"
    assert any(p.grad is not None for p in module.controlnet.parameters())
    with torch.no_grad():  # validation reads frames: the encoders come back for it
        assert torch.isfinite(module._fixed_loss(batch, 0, 0)[0]) and calls
    with pytest.raises(ConfigError, match="cached_conditioning"):
        module.training_step(batch, 1)

    # Lightning moves the module with .to(device): the encoders stay in host memory, and follow the
    # module's device only when sampling needs them (meta stands in for the accelerator here)
    module.to("meta")
    assert module.unet.conv_in.weight.is_meta and not module.vae.decoder.conv_in.weight.is_meta
    pipe = module.pipeline()
    assert pipe.vae.decoder.conv_in.weight.is_meta and next(module.image_encoder.parameters()).is_meta


CONFIG_24GB = REPO_ROOT / "configs" / "ssv2_24gb.yaml"
# the 24 GB config is an overlay, given after configs/ssv2.yaml
CONFIGS_24GB = ["--config", str(REPO_ROOT / "configs" / "ssv2.yaml"), "--config", str(CONFIG_24GB)]


def test_24gb_config_prints(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        cli_main(["fit", *CONFIGS_24GB, "--print_config"])
    assert done.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    trainer, model, data = config["trainer"], config["model"], config["data"]["init_args"]
    # the paper's 8 samples per optimizer step (2 GPUs x 4) on one GPU
    assert trainer["devices"] * trainer["accumulate_grad_batches"] * data["batch_size"] == 8
    memory = model["memory"]
    assert memory["offload_encoders"] and data["cached_conditioning"] and memory["fine_checkpointing"]
    assert model["weight_decay"] == 0.0 and model["learning_rate"] == 1e-5


@pytest.fixture(scope="module")
def cached_shards(tmp_path_factory, synthetic_shards, tiny_svd_folder) -> Path:
    out = tmp_path_factory.mktemp("cached24")
    code = latents_main(
        [
            "--shards", str(synthetic_shards / "train" / "*.tar"), "--out", str(out), "--svd", str(tiny_svd_folder),
            "--num_frames", "4", "--height", "64", "--width", "64", "--device", "cpu", "--no_progress",
        ]
    )  # fmt: skip
    assert code == 0
    return out


def test_24gb_config_trains_two_steps_on_the_tiny_model(
    cached_shards, synthetic_shards, tiny_svd_folder, tmp_path, monkeypatch
):
    """The config as written (its optimizer too: Adam with the moments in host memory, no package needed),
    with the tiny SVD, CPU, fp32 and the test shards: two optimizer steps of two accumulated micro-batches
    each, from the cache, with the encoders never run."""
    monkeypatch.chdir(tmp_path)
    args = [
        *CONFIGS_24GB,
        "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.max_steps", "2",
        "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--model.svd", str(tiny_svd_folder), "--model.conditioning_embedding_out_channels", "[8, 16, 16, 32]",
        "--data.init_args.train_shards", str(cached_shards / "*.tar"),
        "--data.init_args.val_shards", str(synthetic_shards / "validation" / "*.tar"),
        "--data.init_args.num_frames", "4", "--data.init_args.height", "64", "--data.init_args.width", "64",
        "--data.init_args.batch_size", "1", "--data.init_args.num_workers", "0",
        "--data.init_args.persistent_workers", "false", "--data.init_args.shuffle_buffer", "1",
    ]  # fmt: skip
    cli = InterDynCLI(InterDynModule, L.LightningDataModule, subclass_mode_data=True, run=False, args=args)
    model = cli.model
    assert model.memory.offload_encoders and model.memory.fine_checkpointing
    calls = []
    for part in (model.vae.encoder, model.image_encoder):
        part.register_forward_pre_hook(lambda *_: calls.append(1))
    micro_batches = []
    model.on_train_batch_start = lambda batch, i: micro_batches.append(batch["control"].shape[0])
    before = {k: v.clone() for k, v in model.controlnet.state_dict().items()}
    cli.trainer.fit(model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 2 and micro_batches == [1, 1, 1, 1]
    assert not calls, "the cache feeds every step: VAE and CLIP never run"
    assert any(not torch.equal(v, model.controlnet.state_dict()[k]) for k, v in before.items())
    optimizer = cli.trainer.optimizers[0]
    assert isinstance(optimizer, OffloadedAdam)
    assert all(
        float(s["step"]) == 2 and isinstance(s["moments"], HostMoments) for s in optimizer.state.values()
    )


# --------------------------------------------------------------------------- the memory analysis
# benchmarks/train_analysis.py counts a training step's memory on fake CUDA tensors under CUDA's autocast
# rules (docs/benchmarks.md, "Memory per GPU of the shipped configs").


@pytest.fixture(scope="module")
def analysis_module():
    benchmarks = str(REPO_ROOT / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        import train_analysis
    finally:
        sys.path.remove(benchmarks)
    return train_analysis


@pytest.fixture
def analysis(analysis_module):
    """benchmarks/train_analysis.py, with what it changes while it runs (GPU attention kernels) in place."""
    with analysis_module.simulated():
        yield analysis_module


def saved_by_block(analysis, rules: str, checkpointed: bool = False):
    """A resnet-like block (conv, GroupNorm, SiLU, conv) on fake tensors of ``rules``' device under bf16
    autocast: the buffers it saves for the backward pass and autocast's copies of its weights."""
    with torch.device("meta"):
        block = torch.nn.Sequential(
            torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.SiLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1),
        )  # fmt: skip
    mode = analysis.to_fake(block, rules)
    saved = analysis.SavedBytes(exclude=analysis.static_storages(block))
    copies = analysis.WeightCopies({p.untyped_storage()._cdata for p in block.parameters()}, torch.bfloat16)
    with mode, analysis.device_autocast(rules, torch.bfloat16), copies:
        x = torch.zeros(2, 4, 16, 16, device=rules)
        with torch.autograd.graph.saved_tensors_hooks(saved, lambda t: t):
            out = (
                torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) if checkpointed else block(x)
            )
    assert out.device.type == rules and out.dtype == torch.bfloat16
    return saved, copies.bytes_beyond(saved.seen)


def test_cuda_rules_save_the_norm_and_what_follows_it_in_float32(analysis):
    """Under CUDA's autocast GroupNorm runs in float32 (its input is upcast and saved in float32) and the
    SiLU after it then runs in float32 too, so both save float32 buffers; under CPU autocast both stay
    bf16. Everything else (the convolutions' bf16 inputs) is the same: the difference is exactly the
    norm's share, 2 bytes more per element for each of the two buffers (+ its float32 statistics)."""
    n = 2 * 8 * 16 * 16  # elements of the GroupNorm's input and output
    cuda, _ = saved_by_block(analysis, "cuda")
    cpu, _ = saved_by_block(analysis, "cpu")
    assert cuda.by_dtype["float32"] >= 2 * n * 4, cuda.by_dtype
    assert "float32" not in cpu.by_dtype, cpu.by_dtype
    assert 2 * n * 2 <= cuda.bytes - cpu.bytes <= 2 * n * 2 + 64, (cuda.bytes, cpu.bytes)


def test_autocast_weight_copies_are_counted_when_checkpointing_drops_them(analysis):
    """Autocast keeps its bf16 copy of each fp32 weight for the whole forward: a checkpointed block saves
    only its input, but the copies are still held, and the analysis counts them; without checkpointing the
    convolutions save the weight copies (activations already), and only the biases' copies are extra."""
    weights = 2 * (4 * 8 * 9 + 8 * 8 * 9)  # bf16 bytes of the two conv weights
    biases = 2 * (8 + 8)
    saved, extra = saved_by_block(analysis, "cuda", checkpointed=True)
    assert saved.bytes == 2 * 4 * 16 * 16 * 4, "a checkpointed block keeps only its fp32 input"
    assert extra == weights + biases
    _, extra = saved_by_block(analysis, "cuda")
    assert extra == biases


def test_the_step_on_the_tiny_model_follows_cuda_s_rules(analysis):
    """The real training step (tiny model, bf16 autocast, branch checkpointed) on fake CUDA tensors: a
    sizeable share of its activations is float32 (the norms and what follows them; under CPU rules almost
    none, as the block above shows), and the bf16 copies of the checkpointed branch's weights are
    counted besides. (The same comparison at full size: the slow test below.)"""
    from train_recipes import RECIPES, module_kwargs

    recipe = {**RECIPES["bf16+ckpt"], "cached": True}  # cached conditioning: no encoders, a shorter run
    step = analysis.measure_step(recipe, "tiny", "cuda", 2, 2, 64, 64, backward=False, count_flops=False)
    assert step.by_dtype.get("float32", 0) > 0.2 * step.activations, step.by_dtype
    with torch.device("meta"):
        branch = sum(
            p.numel() for p in InterDynModule(**module_kwargs(recipe, "tiny", "cuda")).controlnet.parameters()
        )
    assert 0.5 * 2 * branch < step.weight_copies <= 2 * branch, (step.weight_copies, branch)
    assert step.largest > 0 and step.encoder_peak == 0


CONFIG_MEMORY = "<!-- config-memory:begin -->"


def config_memory_table() -> dict[str, dict[str, str]]:
    """docs/benchmarks.md's per-config memory table: config -> column -> cell."""
    docs = (REPO_ROOT / "docs" / "benchmarks.md").read_text()
    section = docs.split(CONFIG_MEMORY, 1)[1].split("<!-- config-memory:end -->", 1)[0]
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]
    header, body = rows[0], rows[1:]
    return {row[0].strip("`"): dict(zip(header, row, strict=True)) for row in body}


def flat(config: dict) -> dict:
    """A config section with nested groups (e.g. ``memory:``) flattened into one level."""
    out = {}
    for k, v in config.items():
        out.update(flat(v) if isinstance(v, dict) and k != "init_args" else {k: v})
    return out


# How each analysed config is given on the command line (the 24 GB config is an overlay of ssv2.yaml's).
CONFIG_FILES = {
    "configs/ssv2.yaml": ["configs/ssv2.yaml"],
    "configs/ssv2_24gb.yaml": ["configs/ssv2.yaml", "configs/ssv2_24gb.yaml"],
}


@pytest.mark.parametrize("config_name", list(CONFIG_FILES))
def test_the_analysed_recipe_is_the_shipped_config(
    analysis_module, config_name, capsys, monkeypatch, tmp_path
):
    """The recipe the analysis models for each GPU config has the config's switches, precision,
    micro-batch and accumulation, as `interdyn fit` resolves the config (a config change without the
    analysis' would leave its figures stale)."""
    from train_recipes import CONFIG_RECIPES, RECIPES

    recipe = RECIPES[CONFIG_RECIPES[config_name]]
    monkeypatch.chdir(tmp_path)
    args = [a for f in CONFIG_FILES[config_name] for a in ("--config", str(REPO_ROOT / f))]
    with pytest.raises(SystemExit) as done:
        cli_main(["fit", *args, "--print_config"])
    assert done.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    trainer, model, data = config["trainer"], flat(config["model"]), config["data"]["init_args"]
    assert trainer["precision"] == ("bf16-mixed" if recipe.get("autocast") == "bfloat16" else "32-true")
    assert data["batch_size"] == recipe.get("batch", 4)
    assert (trainer.get("accumulate_grad_batches") or 1) == recipe.get("accumulate", 1)
    assert bool(data.get("cached_conditioning")) == recipe.get("cached", False)
    for key in (
        "gradient_checkpointing",
        "unet_gradient_checkpointing",
        "fine_checkpointing",
        "offload_encoders",
    ):
        assert bool(model.get(key)) == recipe.get(key, False), key
    assert model["frozen_dtype"] == recipe["frozen_dtype"]
    assert model["optimizer"] == recipe.get("optimizer", "adam")
    if trainer["devices"] > 1:  # the analysis counts one fp32 copy of the gradients: DDP's bucket views
        assert trainer["strategy"]["init_args"]["gradient_as_bucket_view"] is True


def test_the_documented_24gb_recipe_fits_and_the_table_adds_up(analysis_module):
    table = config_memory_table()
    assert set(table) == {"configs/ssv2.yaml", "configs/ssv2_24gb.yaml"}
    for config, row in table.items():
        static = sum(float(row[c]) for c in ("frozen weights", "branch weights (fp32)", "gradients (fp32)"))
        static += float(row["Adam state on the GPU"])
        peak = float(row["allocated peak"])
        assert static + float(row["activations"]) - 0.2 <= peak, config
        assert (
            peak
            <= static
            + float(row["activations"])
            + float(row["bf16 weight copies"])
            + float(row["backward working set"])
            + 0.2
        ), config
        assert abs(float(row["+ slack"]) - peak * (1 + analysis_module.ALLOCATOR_SLACK)) <= 0.1, config
        fits = float(row["+ CUDA context"]) <= analysis_module.CARD_24GB_GIB
        assert row["fits 24 GB"] == ("yes" if fits else "no"), config
    assert table["configs/ssv2_24gb.yaml"]["fits 24 GB"] == "yes"
    assert float(table["configs/ssv2_24gb.yaml"]["+ CUDA context"]) < 24


@pytest.mark.slow
def test_full_size_analysis_by_cuda_rules_matches_the_docs(analysis):
    """The full-size analysis of configs/ssv2.yaml and configs/ssv2_24gb.yaml (about a minute on 2 cores):
    CUDA's rules add the norms' float32 share to the bf16 count, the 24 GB recipe fits a 24 GB card, and
    docs/benchmarks.md quotes what the script computes."""
    from argparse import Namespace

    from train_recipes import CONFIG_RECIPES

    args = Namespace(
        preset="svd", frames=14, height=256, width=384, batch=4, recipes=list(CONFIG_RECIPES.values())
    )
    rows = {r["recipe"]: r for r in analysis.analyze(args)}
    for row in rows.values():
        extra = row["activations_gib"] - row["activations_cpu_rules_gib"]
        assert 0.25 * row["activations_fp32_gib"] < extra <= row["activations_fp32_gib"], row
    assert analysis.fits_24gb(rows["24gb"]) and rows["24gb"]["with_context_gib"] < 24
    assert not analysis.fits_24gb(rows["recommended"])
    table = config_memory_table()
    for config, recipe in CONFIG_RECIPES.items():
        for heading, key in analysis.CONFIG_COLUMNS:
            assert abs(float(table[config][heading]) - rows[recipe][key]) <= 0.051, (config, heading)

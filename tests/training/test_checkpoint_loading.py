"""How ``--ckpt_path`` files are read: memory-mapped (the optimizer state, most of a full-size checkpoint, is
never read into memory), only what the stage restores (``test`` gets no optimizer state), and whatever is
not a training checkpoint (an empty file, a list, a plain state dict, text) refused in one sentence."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from interdyn.commands.cli import InterDynCLI, main
from interdyn.errors import UnsafeCheckpointError
from interdyn.training.checkpoint import load_checkpoint
from interdyn.training.module import InterDynModule
from tests.helpers import REPO_ROOT

TINY = str(REPO_ROOT / "configs" / "tiny.yaml")
SMALL = [
    "--data.init_args.num_frames",
    "2",
    "--data.init_args.num_train",
    "4",
    "--data.init_args.num_test",
    "2",
]


def mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """The address ranges at which this process maps ``path`` (Linux's /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            start, end = line.split()[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_local_checkpoints_are_memory_mapped(tmp_path):
    """The loaded tensors live in a mapping of the file: the optimizer state is read only if touched."""
    path = tmp_path / "big.ckpt"
    torch.save(
        {
            "state_dict": {"controlnet.w": torch.ones(8)},
            "optimizer_states": [{"exp_avg": torch.zeros(1 << 20)}],
        },
        path,
    )
    checkpoint = load_checkpoint(path)
    tensor = checkpoint["optimizer_states"][0]["exp_avg"]
    ranges = mapped_ranges(path)
    assert any(start <= tensor.data_ptr() < end for start, end in ranges), "not memory-mapped"
    assert torch.equal(checkpoint["state_dict"]["controlnet.w"], torch.ones(8))


def test_legacy_torch_files_still_load(tmp_path):
    """Files in torch's pre-zip format cannot be mapped: they are read as before."""
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(2))


def bad_files(folder: Path) -> dict[str, Path]:
    """Files that are not training checkpoints, by what they are."""
    files = {name: folder / f"{name}.ckpt" for name in ("empty", "list", "state_dict", "text", "garbage")}
    files["empty"].write_bytes(b"")
    torch.save([torch.ones(2), 3], files["list"])
    torch.save({"controlnet.w": torch.ones(2), "controlnet.b": torch.zeros(2)}, files["state_dict"])
    files["text"].write_text("hello world\n")  # torch raises a KeyError on this one
    files["garbage"].write_bytes(bytes(range(256)) * 4)
    return files


EXPECTED = {
    "empty": "is empty (0 bytes)",
    "list": "holds a list",
    "state_dict": "a plain state dict without a 'state_dict' entry",
    "text": "cannot read",
    "garbage": "cannot read",
}


def test_files_that_are_not_training_checkpoints_are_refused(tmp_path):
    for name, path in bad_files(tmp_path).items():
        with pytest.raises(UnsafeCheckpointError) as refused:
            load_checkpoint(path)
        message = str(refused.value)
        assert EXPECTED[name] in message, (name, message)
        # torch's advice to turn weights_only off never reaches the user
        assert "weights_only" not in message and "PyTorch 2.6" not in message, message


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_cli_refuses_them_in_one_sentence(subcommand, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, path in bad_files(tmp_path).items():
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([subcommand, "--config", TINY, *SMALL, "--ckpt_path", str(path)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (name, err[-2000:])
        assert "Traceback" not in err and "Warning" not in err, (name, err[-2000:])
        last = err.strip().splitlines()[-1]
        assert last.startswith("interdyn: error:") and EXPECTED[name] in last, (name, last)


def test_a_test_run_restores_the_branch_without_the_optimizer_state(tmp_path, monkeypatch):
    """The trainer's loader drops the optimizer state outside `fit` (never read from the mapped file) and
    `fit` gets it; `test` from the checkpoint runs with the checkpoint's branch."""
    monkeypatch.chdir(tmp_path)
    args = ["--config", TINY, *SMALL, "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false"]
    cli = InterDynCLI(InterDynModule, L.LightningDataModule, subclass_mode_data=True, run=False, args=args)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    path = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(path, weights_only=True, map_location="cpu")
    assert saved["optimizer_states"]

    io = cli.trainer.strategy.checkpoint_io
    for stage in (TrainerFn.TESTING, TrainerFn.VALIDATING, TrainerFn.PREDICTING):
        cli.trainer.state.fn = stage
        loaded = io.load_checkpoint(path)
        assert "optimizer_states" not in loaded and "lr_schedulers" not in loaded
        assert loaded["state_dict"].keys() == saved["state_dict"].keys()
    cli.trainer.state.fn = TrainerFn.FITTING
    assert io.load_checkpoint(path)["optimizer_states"]

    with torch.no_grad():  # the test run must load the checkpoint's branch, not keep these weights
        for p in cli.model.controlnet.parameters():
            p.add_(1.0)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(path))
    for key, value in saved["state_dict"].items():
        assert torch.equal(cli.model.state_dict()[key], value), key


def test_fit_refuses_a_checkpoint_without_optimizer_state(tmp_path, monkeypatch, capsys):
    """A weights-only checkpoint (ModelCheckpoint's save_weights_only) cannot be resumed: one sentence."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "weights.ckpt"
    model = InterDynModule(svd="random:tiny", conditioning_embedding_out_channels=(8, 16, 16, 32))
    torch.save({"state_dict": {f"controlnet.{k}": v for k, v in model.controlnet.state_dict().items()}}, path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", TINY, *SMALL, "--trainer.max_steps", "1", "--ckpt_path", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err[-2000:]
    assert "no optimizer state" in err.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "runs" / "tiny" / "version_0" / "checkpoints")

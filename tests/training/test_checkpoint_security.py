"""Checkpoints never run code: every load, local or URL, is weights-only, and no option turns it off."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from interdyn.commands.cli import main
from interdyn.errors import UnsafeCheckpointError, WeightsNotFoundError
from interdyn.training.checkpoint import load_checkpoint
from interdyn.training.checkpoint_io import WeightsOnlyCheckpointIO
from tests.helpers import REPO_ROOT

TINY = str(REPO_ROOT / "configs" / "tiny.yaml")
SMALL = ["--data.init_args.num_frames", "4", "--data.init_args.num_test", "2"]


class Payload:
    """Unpickling this opens ``marker`` for writing: it creates the file, as any code could run there."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_checkpoint(folder: Path) -> tuple[Path, Path]:
    marker = folder / "payload-ran"
    path = folder / "hostile.ckpt"
    torch.save({"state_dict": {}, "global_step": 0, "surprise": Payload(marker)}, path)
    return path, marker


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A local HTTP server (127.0.0.1) serving ``tmp_path``; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_cli(
    *args: str, cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[int, str]:
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def test_the_payload_is_live(tmp_path):
    """The hostile file really runs code under a plain unpickler (what Lightning's URL loader did)."""
    path, marker = hostile_checkpoint(tmp_path)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("where", ["file", "url"])
def test_load_checkpoint_refuses_pickled_objects(tmp_path, served, where):
    path, marker = hostile_checkpoint(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="not weights-only"):
        load_checkpoint(path if where == "file" else f"{served}/{path.name}")
    with pytest.raises(UnsafeCheckpointError, match="not weights-only"):  # whatever Lightning asks for
        WeightsOnlyCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["file", "url"])
@pytest.mark.parametrize("weights_only", [None, "false"])
def test_cli_refuses_a_hostile_checkpoint(tmp_path, served, monkeypatch, capsys, where, weights_only):
    path, marker = hostile_checkpoint(tmp_path)
    ckpt = str(path) if where == "file" else f"{served}/{path.name}"
    extra = ["--weights_only", weights_only] if weights_only else []
    code, err = run_cli(
        "test",
        "--config",
        TINY,
        *SMALL,
        "--ckpt_path",
        ckpt,
        *extra,
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    assert ("weights-only" in err) and ("--weights_only false is not supported" in err) == bool(weights_only)
    assert not marker.exists()


def test_missing_and_unreadable_checkpoints_are_one_sentence(tmp_path, served, monkeypatch, capsys):
    code, err = run_cli(
        "test",
        "--config",
        TINY,
        *SMALL,
        "--ckpt_path",
        str(tmp_path / "nope.ckpt"),
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    with pytest.raises(WeightsNotFoundError, match="cannot download"):
        load_checkpoint(f"{served}/nope.ckpt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(UnsafeCheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "text.ckpt")


def test_a_project_checkpoint_loads_from_a_url_onto_the_cpu(tmp_path, served):
    """What ``interdyn fit`` writes (tensors, optimizer state, loop progress, callback states) passes
    the weights-only loader."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from interdyn.data import MovingShapesDataModule
    from tests.helpers import tiny_module

    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)],
        limit_val_batches=0,
    )
    data = MovingShapesDataModule(
        num_train=2, num_val=1, num_test=1, num_frames=2, height=64, width=64, batch_size=2
    )
    trainer.fit(tiny_module(), datamodule=data)
    checkpoint = load_checkpoint(f"{served}/last.ckpt")
    assert checkpoint["global_step"] == 1 and checkpoint["optimizer_states"]
    assert all(v.device.type == "cpu" for v in checkpoint["state_dict"].values())


def test_a_checkpoint_saved_on_cuda0_loads_onto_the_cpu(tmp_path, monkeypatch):
    """Storages tagged ``cuda:0`` (what rank 0 of a GPU run writes) are mapped to the CPU: no rank
    allocates on another rank's device, and a machine without a GPU can read the file."""
    path = tmp_path / "gpu.ckpt"
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"state_dict": {"w": torch.ones(3)}, "global_step": 7}, path)
    if not torch.cuda.is_available():  # the file really names cuda:0
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    for checkpoint in (
        load_checkpoint(path),
        WeightsOnlyCheckpointIO().load_checkpoint(path, map_location="cuda:0"),
    ):
        assert checkpoint["state_dict"]["w"].device.type == "cpu" and checkpoint["global_step"] == 7

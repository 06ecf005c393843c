"""The sample-video callback in a real (tiny) training run."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from interdyn.callbacks import SampleVideoLogger
from interdyn.data import MovingShapesDataModule
from tests.test_module import tiny_module


def test_sampled_videos_reach_disk_and_tensorboard(tmp_path):
    logger = TensorBoardLogger(save_dir=tmp_path, name="run")
    callback = SampleVideoLogger(num_videos=2, num_inference_steps=2)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        val_check_interval=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = MovingShapesDataModule(num_train=4, num_val=2, num_frames=4, batch_size=2)
    trainer.fit(tiny_module(), datamodule=data)
    gif = Image.open(callback.last_path)
    assert callback.last_path.parent == tmp_path / "run" / "version_0" / "samples"
    assert gif.n_frames == 4 and gif.size == (3 * 64, 2 * 64)  # control | sample | truth, one row per clip
    events = EventAccumulator(str(tmp_path / "run" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()["images"]
    assert any(t.startswith("samples/") for t in tags)


def test_rank_states_merge_in_key_order_whatever_the_split():
    """The ranks' evaluation states merge into the one-process state: rows and I3D features follow the
    clip keys, so FVD/KVD do not depend on which rank scored which clip, or in which order."""
    from interdyn.callbacks.evaluation import merge_states
    from interdyn.metrics.suite import summarize

    gen = torch.Generator().manual_seed(0)
    keys, n = ["a", "b", "c", "d"], 2
    real = {k: torch.randn(400, generator=gen, dtype=torch.float64) for k in keys}
    fake = {k: torch.randn(n, 400, generator=gen, dtype=torch.float64) for k in keys}

    def state(order: list[str]) -> dict:
        rows = [{"key": k, "sample": i, "ssim": float(fake[k][i, 0])} for k in order for i in range(n)]
        return {
            "rows": rows,
            "real": torch.stack([real[k] for k in order]),
            "fake": torch.cat([fake[k] for k in order]),
            "shape": (2, 3, 8, 8),
        }

    one = merge_states([state(keys)])
    split = merge_states([state(["c", "a"]), state(["d", "b"])])
    assert split["rows"] == one["rows"] and [r["key"] for r in one["rows"]] == [
        k for k in keys for _ in range(n)
    ]
    assert torch.equal(split["real"], one["real"]) and torch.equal(split["fake"], one["fake"])
    assert summarize([split], ["fvd", "kvd"]) == summarize([one], ["fvd", "kvd"])
    assert summarize([one], ["fvd"])["num_videos"] == 4
    # a clip scored on two ranks counts once
    assert (
        merge_states([state(["a", "b"]), state(["b", "c"])])["rows"]
        == merge_states([state(["a", "b", "c"])])["rows"]
    )

"""The sample-video callback in a real (tiny) training run."""

from __future__ import annotations

from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from interdyn.callbacks import SampleVideoLogger
from interdyn.data import MovingShapesDataModule
from tests.helpers import short_fit_trainer, tiny_module


def test_sampled_videos_reach_disk_and_tensorboard(tmp_path):
    logger = TensorBoardLogger(save_dir=tmp_path, name="run")
    callback = SampleVideoLogger(num_videos=2, num_inference_steps=2)
    trainer = short_fit_trainer(logger=logger, callbacks=[callback])
    data = MovingShapesDataModule(num_train=4, num_val=2, num_frames=4, batch_size=2)
    trainer.fit(tiny_module(), datamodule=data)
    gif = Image.open(callback.last_path)
    assert callback.last_path.parent == tmp_path / "run" / "version_0" / "samples"
    assert gif.n_frames == 4 and gif.size == (3 * 64, 2 * 64)  # control | sample | truth, one row per clip
    events = EventAccumulator(str(tmp_path / "run" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()["images"]
    assert any(t.startswith("samples/") for t in tags)

"""`interdyn predict` writing its videos as they come (VideoPredictionWriter): files per clip, nothing kept in
host memory, and a killed run finished by rerunning it, with the same bytes as one whole run."""

from __future__ import annotations

import lightning as L
import pytest
from torch.utils.data import DataLoader

from interdyn.callbacks import VideoPredictionWriter
from interdyn.data.video import decode_frames
from interdyn.utils.files import TMP_SUFFIX
from tests.helpers import tiny_module, toy_batch
from tests.training.wan.helpers import FRAMES, SIZE, tiny_wan_module


def svd_case():
    """The tiny SVD module sampling 2 videos per clip in one step, and 4 toy clips of its shape."""
    return tiny_module(num_samples=2, num_inference_steps=1), toy_batch(n=4, frames=4), (4, 64, 64, 3)


def wan_case():
    """The same for the tiny Wan (its smallest clip)."""
    module = tiny_wan_module(layers="first:1", num_samples=2, sampling={"num_inference_steps": 1})
    batch = toy_batch(n=4, frames=FRAMES, size=SIZE)
    return module, batch, (FRAMES, SIZE, SIZE, 3)


def predict(module, out, batches) -> tuple[list, list[int]]:
    """Run ``trainer.predict`` with the writer; also returns the batch size of every sampling call."""
    calls = []
    original = module.sample
    module.sample = lambda pixels, control, **kw: calls.append(len(pixels)) or original(pixels, control, **kw)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[VideoPredictionWriter(str(out), fps=7.0)],
    )  # fmt: skip
    predictions = trainer.predict(module, dataloaders=DataLoader(batches, batch_size=None))
    module.sample = original
    return predictions, calls


@pytest.mark.parametrize("case", [svd_case, wan_case], ids=["svd", "wan"])
def test_videos_go_to_disk_per_clip_and_a_rerun_samples_only_what_is_missing(tmp_path, case):
    module, whole, shape = case()
    batches = [
        {k: v[:2] for k, v in whole.items()},
        {k: v[2:] for k, v in whole.items()},
    ]
    out = tmp_path / "videos"
    predictions, calls = predict(module, out, batches)
    keys = whole["key"]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(f"{k}_s{j}.mp4" for k in keys for j in range(2))
    assert calls == [2, 2]  # each batch's clips sampled together
    # what trainer.predict keeps: keys and paths, no videos
    assert all(p["videos"] is None and len(p["paths"]) == 4 for p in predictions)
    assert decode_frames((out / files[0]).read_bytes()).shape == shape
    first_run = {name: (out / name).read_bytes() for name in files}

    # a run killed after clip 2's first video: clips 2 and 3 are sampled again (together, each with its
    # key's seed), clips 0 and 1 are not sampled at all and their files are left as they were
    (out / f"{keys[2]}_s1.mp4").unlink()
    (out / f"{keys[3]}_s0.mp4").unlink()
    (out / f"{keys[3]}_s1.mp4").unlink()
    predictions, calls = predict(module, out, batches)
    assert calls == [2]
    assert predictions[0] is None and predictions[1]["key"] == keys[2:]
    for name, data in first_run.items():
        if name.startswith((keys[0], keys[1])):
            assert (out / name).read_bytes() == data, name
        else:  # rewritten whole (the same videos up to the sampling's rounding)
            assert decode_frames((out / name).read_bytes()).shape == shape
    assert not list(out.glob(f"*{TMP_SUFFIX}*"))  # written through temporary files, all renamed

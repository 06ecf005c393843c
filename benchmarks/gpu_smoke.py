"""A short real run of the paper's recipe: ``interdyn fit`` then ``interdyn test`` with configs/ssv2.yaml's
own trainer and model switches (bf16-mixed, bf16 frozen parts, gradient checkpointing, clipping with
fused Adam on CUDA, periodic checkpoints, validation, the video logger and the test table), on the tiny
random SVD and a few clips of the built-in dataset, read from shards. With ``--devices 2`` both commands
run as 2 processes with the config's own DDP strategy (NCCL on CUDA, gloo on CPU).

    python benchmarks/gpu_smoke.py --device cuda                # part of `make gpu-check`
    python benchmarks/gpu_smoke.py --device cuda --devices 2    # the 2-GPU item of `make gpu-check`
    python benchmarks/gpu_smoke.py --device cpu                 # the same path on CPU (bf16 is emulated)

Prints one JSON line (``{"smoke": ..., "fit_seconds": ..., "test_seconds": ..., "metrics": ...}``) and
exits non-zero when either command fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def make_shards(out: Path) -> None:
    """A few 64x64 clips of the built-in dataset: training, validation and two counterfactual groups."""
    sys.path.insert(0, str(ROOT))
    from data_prep.synthetic import World, write_split

    world = World(height=64, width=64)
    for split, count, variants in (("train", 8, 1), ("validation", 2, 1), ("test", 2, 2)):
        write_split(out, split, count, 0, world, num_frames=30, fps=14.0, variants=variants, progress=False)


def smoke_config(config_path: Path, shards: Path, runs: Path, device: str, devices: int = 1) -> dict:
    """The config's trainer and model recipe at the tiny model's scale (steps, clips and sampling cut); one
    device runs without DDP, several with the config's strategy."""
    config = yaml.safe_load(config_path.read_text())
    demo = yaml.safe_load((ROOT / "configs" / "tiny_shards.yaml").read_text())
    trainer = config["trainer"]
    trainer.update(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=devices,
        strategy=trainer.get("strategy", "auto") if devices > 1 else "auto",
        max_steps=4,
        val_check_interval=2,
        limit_val_batches=2,
        enable_progress_bar=False,
        logger={
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(runs), "name": "smoke"},
        },
    )
    for callback in trainer.get("callbacks", []):
        args = callback.setdefault("init_args", {})
        name = callback["class_path"].rsplit(".", 1)[-1]
        if name == "ModelCheckpoint":
            args.update(every_n_train_steps=2)
        elif name == "SampleVideoLogger":
            args.update(num_videos=1, num_inference_steps=2)
        elif name == "VideoEvaluation":  # LPIPS and FVD/KVD need weights a fresh machine may not have
            args.update(
                metrics=[m for m in args.get("metrics", []) if m not in ("lpips", "fvd", "kvd")],
                num_inference_steps=2,
                save_videos=1,
            )
    model = config["model"]
    model.update(
        svd=demo["model"]["svd"],
        conditioning_embedding_out_channels=demo["model"]["conditioning_embedding_out_channels"],
        sampling={**(model.get("sampling") or {}), "num_inference_steps": 2},
    )
    data = config["data"]["init_args"]
    for key, split in (("train", "train"), ("val", "validation"), ("test", "test")):
        data[f"{key}_shards"] = str(shards / split / "*.tar")
    data.update(clip={**(data.get("clip") or {}), "height": 64, "width": 64}, epoch_samples=8 * devices)
    data.update(batch_size=2, eval_batch_size=1, num_workers=1, persistent_workers=False)
    return config


def strategy_label(strategy: str | dict) -> str:
    """The trainer's strategy in a few words, e.g. ``DDPStrategy (gradient_as_bucket_view)``."""
    if isinstance(strategy, str):
        return strategy
    init = strategy.get("init_args") or {}
    views = " (gradient_as_bucket_view)" if init.get("gradient_as_bucket_view") else ""
    return strategy["class_path"].rsplit(".", 1)[-1] + views


def run(args: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "interdyn.commands.cli", *args], cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"interdyn {args[0]} failed (exit {result.returncode}):\n{tail}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--devices", type=int, default=1, help="processes (2: DDP, as configs/ssv2.yaml)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ssv2.yaml")
    parser.add_argument(
        "--scratch", type=Path, default=None, help="work folder (default: a new temporary one)"
    )
    args = parser.parse_args(argv)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    make_shards(scratch / "shards")
    config = smoke_config(args.config, scratch / "shards", scratch / "runs", args.device, args.devices)
    path = scratch / "smoke.yaml"
    path.write_text(yaml.safe_dump(config))
    fit_seconds = run(["fit", "--config", str(path)])
    last = scratch / "runs" / "smoke" / "version_0" / "checkpoints" / "last.ckpt"
    test_seconds = run(["test", "--config", str(path), "--ckpt_path", str(last)])
    report = json.loads((scratch / "runs" / "smoke" / "version_1" / "metrics.json").read_text())
    print(
        json.dumps(
            {
                "smoke": f"fit + test, {args.config.name} recipe, tiny model",
                "devices": args.devices,
                "strategy": strategy_label(config["trainer"]["strategy"]),
                "fit_seconds": round(fit_seconds, 1),
                "test_seconds": round(test_seconds, 1),
                "metrics": report.get("metrics"),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

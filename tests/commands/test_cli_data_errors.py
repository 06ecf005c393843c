"""Bad data paths and settings through the `interdyn` command: one sentence and exit code 2, also when the
error happens in a DataLoader worker."""

from __future__ import annotations

import tarfile

from tests.helpers import REPO_ROOT, run_cli

DEMO = str(REPO_ROOT / "configs" / "tiny_shards.yaml")


def fit_demo(train: str, val: str, tmp_path, monkeypatch, capsys, workers: int = 0) -> tuple[int, str]:
    return run_cli(
        "fit",
        "--config",
        DEMO,
        "--data.init_args.train_shards",
        train,
        "--data.init_args.val_shards",
        val,
        "--data.init_args.num_workers",
        str(workers),
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )


def test_missing_shards_name_the_fix(tmp_path, monkeypatch, capsys):
    code, err = fit_demo(
        str(tmp_path / "data/train/*.tar"), str(tmp_path / "data/val/*.tar"), tmp_path, monkeypatch, capsys
    )
    assert code == 2, err[-2000:]
    assert "no shards match" in err and "make shards" in err and "Traceback" not in err


def test_shards_without_samples_stop_training_in_a_worker(tmp_path, monkeypatch, capsys):
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "empty-000000.tar", "w"):
        pass
    shards = str(tmp_path / "shards" / "*.tar")
    code, err = fit_demo(shards, shards, tmp_path, monkeypatch, capsys, workers=1)
    assert code == 2, err[-2000:]
    assert "in a row gave no sample" in err and "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("interdyn: error:")]
    assert len(message) == 1 and "DataLoader worker" not in message[0]


def test_a_negative_learning_rate_is_one_sentence(tmp_path, monkeypatch, capsys):
    code, err = run_cli(
        "fit",
        "--config",
        str(REPO_ROOT / "configs" / "tiny.yaml"),
        "--model.learning_rate=-1e-4",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 2, err[-2000:]
    assert "learning_rate must be > 0" in err and "Traceback" not in err

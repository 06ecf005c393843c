"""What a user reads when a config or a weights path is not what the command needs: an empty config file
and a relative weights path used from another directory get a sentence that says what happened, and the
project's shipped weights (configs/demo.yaml's ``weights/world/svd``) load from any directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from interdyn.errors import WeightsNotFoundError
from interdyn.models.hub import looks_like_local_path, resolve_local_path
from interdyn.models.svd import get_encoders
from tests.helpers import REPO_ROOT, run_interdyn


def run_cli(*args: str, cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    done = run_interdyn(*args, cwd=cwd, monkeypatch=monkeypatch, capsys=capsys)
    return done.returncode, done.stderr


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_an_empty_config_says_it_is_empty(text, tmp_path, monkeypatch, capsys):
    config = tmp_path / "empty.yaml"
    config.write_text(text)
    code, err = run_cli("fit", "--config", str(config), cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err
    assert "empty.yaml" in last and "holds no settings" in last, last


def test_a_config_that_is_not_a_mapping_says_so(tmp_path, monkeypatch, capsys):
    config = tmp_path / "list.yaml"
    config.write_text("- fit\n- 3\n")
    code, err = run_cli("fit", "--config", str(config), cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and "list.yaml" in last and "not a mapping" in last, last


def test_a_config_that_is_not_yaml_names_the_file_and_the_line(tmp_path, monkeypatch, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("trainer:\n  max_steps: [1\n")
    code, err = run_cli("fit", f"--config={config}", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and "broken.yaml is not valid YAML" in last and "line" in last, last


def test_a_config_with_the_flat_clip_settings_says_where_they_went(tmp_path, monkeypatch, capsys):
    """Configs written before the clip settings became the DataModule's ``clip`` group get one sentence."""
    config = tmp_path / "old.yaml"
    config.write_text("data:\n  init_args:\n    eval_window: start\n    num_frames: 4\n")
    base = str(REPO_ROOT / "configs" / "tiny_shards.yaml")
    args = ("fit", "--config", base, "--config", str(config), "--print_config")
    code, err = run_cli(*args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "old.yaml sets data.init_args.eval_window, which is now data.init_args.clip.window" in last


def test_flat_module_settings_go_into_their_groups(tmp_path, monkeypatch, capsys):
    """Options written before the module's settings became groups still work on the command line; a config
    file that spells one flat gets one sentence saying where it goes."""
    import yaml

    base = str(REPO_ROOT / "configs" / "tiny.yaml")
    flat = ("--model.num_inference_steps", "3", "--model.frozen_dtype=bfloat16", "--model.p_mean", "0.5")
    done = run_interdyn(
        "fit", "--config", base, *flat, "--print_config", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys
    )
    assert done.returncode == 0, done.stderr[-1000:]
    model = yaml.safe_load(done.stdout)["model"]
    assert model["sampling"]["num_inference_steps"] == 3 and model["memory"]["frozen_dtype"] == "bfloat16"
    assert model["objective"]["p_mean"] == 0.5 and model["sampling"]["max_guidance_scale"] == 3.0
    config = tmp_path / "old.yaml"
    config.write_text("model:\n  num_inference_steps: 3\n")
    code, err = run_cli(
        "fit", "--config", base, "--config", str(config), cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys
    )
    last = err.strip().splitlines()[-1]
    assert (
        code == 2
        and "old.yaml sets model.num_inference_steps, which is now model.sampling.num_inference_steps" in last
    )


SHIPPED = REPO_ROOT / "weights" / "world" / "svd"


@pytest.mark.skipif(not (SHIPPED / "vae" / "config.json").is_file(), reason="the shipped world weights")
def test_shipped_weights_load_from_another_directory(tmp_path, monkeypatch):
    """configs/demo.yaml's relative `weights/world/svd` from a directory that has no such folder."""
    monkeypatch.chdir(tmp_path)
    assert looks_like_local_path("weights/world/svd")
    assert Path(resolve_local_path("weights/world/svd")) == SHIPPED
    vae, clip = get_encoders("weights/world/svd")
    assert vae.config.latent_channels > 0 and clip.config.projection_dim > 0


def test_a_folder_of_the_working_directory_wins(tmp_path, monkeypatch):
    """A relative path that exists where the command runs is the user's, not the shipped one."""
    (tmp_path / "weights" / "world" / "svd").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    found = Path(resolve_local_path("weights/world/svd")).resolve()
    assert found == (tmp_path / "weights" / "world" / "svd").resolve()


def test_a_missing_relative_path_names_the_directory_it_was_looked_for_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsNotFoundError) as missing:
        get_encoders("my_weights/world/svd")
    message = str(missing.value)
    assert "resolved against the current directory" in message and str(tmp_path) in message
    assert "gated" not in message  # not a hub download problem

"""The commands outside LightningCLI (generate, export, evaluate, weights, app) in LightningCLI's style:
--help from the docstrings, --config files, --print_config, bare bool flags, several values for list
options, usage errors replaced by a one-argument handler as with argparse. Parsing only: no model runs."""

from __future__ import annotations

import pytest
import yaml

from interdyn.commands.cli import COMMANDS, main
from interdyn.commands.generate import build_parser, sampling_settings
from interdyn.errors import InputError
from interdyn.models.sampling import DEFAULT_SAMPLING


def run_main(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(argv)
    out, err = capsys.readouterr()
    return done.value.code, out, err


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["generate"], "--no_progress [{true,false}]"),
        (["export"], "--ckpt_path CKPT_PATH"),
        (["evaluate"], "--metrics {ssim,psnr,lpips,fvd,kvd,motion_fidelity,physics}"),
        (["weights", "fetch"], "the Kinetics-400 I3D of FVD/KVD"),
        (["app"], "--port PORT"),
    ],
)
def test_every_command_has_help_from_its_docstring(argv, phrase, capsys):
    code, out, _ = run_main([*argv, "--help"], capsys)
    assert code == 0 and phrase in " ".join(out.split()) and "--print_config" in out and "--config" in out


def test_the_top_level_help_lists_every_command(capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0 and all(f"interdyn {name} --help" in out for name in COMMANDS)


def test_generate_reads_a_config_file_and_prints_it(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        "image: scene.png\ncontrol: [a.webm, b.webm]\nsteps: 4\nscheduler: dpmpp_2m\nno_progress: true\n"
    )
    args = build_parser().parse_args(["--config", str(config), "--seed", "7"])
    # `steps` is the older spelling of num_inference_steps, SamplingSettings' name
    assert (args.image, args.control, args.num_inference_steps, args.seed, args.no_progress) == (
        "scene.png",
        ["a.webm", "b.webm"],
        4,
        7,
        True,
    )
    # The settings the command line names win over a checkpoint's, which win over the defaults.
    settings = sampling_settings(args, {"num_inference_steps": 9, "motion_bucket_id": 30})
    assert (settings.num_inference_steps, settings.motion_bucket_id, settings.scheduler) == (
        4,
        30,
        "dpmpp_2m",
    )
    assert settings.fps_id == DEFAULT_SAMPLING.fps_id

    code, out, _ = run_main(["generate", "--config", str(config), "--print_config"], capsys)
    printed = yaml.safe_load(out)
    assert code == 0 and printed["control"] == ["a.webm", "b.webm"] and printed["num_inference_steps"] == 4
    assert (printed["num_frames"], printed["height"], printed["crop"]) == (14, 256, "center")  # the demo clip
    assert printed["min_guidance_scale"] is None  # not given: the checkpoint's, else the paper's


def test_a_new_sampling_setting_reaches_generate(monkeypatch):
    """generate's sampling flags are SamplingSettings' fields: one added there is a flag here (with its help),
    read into the settings the pipeline gets."""
    from dataclasses import field, make_dataclass

    from interdyn.commands import generate as command
    from interdyn.models.sampling import SamplingSettings

    extended = make_dataclass(
        "Extended", [("eta", float, field(default=0.5))], bases=(SamplingSettings,), frozen=True
    )
    extended.__doc__ = SamplingSettings.__doc__.replace(
        "Args:\n", "Args:\n        eta: a new sampler setting.\n"
    )
    monkeypatch.setattr(command, "SamplingSettings", extended)
    parser = command.build_parser()
    settings = command.sampling_settings(parser.parse_args(["--eta", "0.25", "--steps", "3"]), {})
    assert (settings.eta, settings.num_inference_steps) == (0.25, 3)
    assert command.sampling_settings(parser.parse_args([]), {"eta": 0.75}).eta == 0.75  # a checkpoint's
    assert "a new sampler setting" in " ".join(parser.format_help().split())


def test_flags_lists_and_usage_errors():
    parser = build_parser()
    assert parser.parse_args(["--no_progress"]).no_progress is True
    assert parser.parse_args(["--no_progress", "false"]).no_progress is False
    assert parser.parse_args(["--control", "a.webm", "b.npz", "--steps", "2"]).control == ["a.webm", "b.npz"]
    old = parser.parse_args(
        ["--steps", "2", "--min_guidance", "1.5", "--max_guidance", "2"]
    )  # older spellings
    assert (old.num_inference_steps, old.min_guidance_scale, old.max_guidance_scale) == (2, 1.5, 2.0)
    assert parser.parse_args(["--num_frames", "4", "--height", "64"]).num_frames == 4  # flat clip flags

    def error(message: str) -> None:  # what code written for argparse assigns (the browser app does)
        raise InputError(f"invalid settings: {message}.")

    parser.error = error  # type: ignore[method-assign]
    with pytest.raises(InputError, match="invalid settings: unrecognized arguments: --num-frames"):
        parser.parse_args(["--num-frames", "4"])  # one spelling: the underscore one


def test_usage_and_user_errors_exit_2(tmp_path, capsys):
    code, _, err = run_main(["export", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "ckpt_path" in err  # a required option
    missing = str(tmp_path / "no.ckpt")
    code, _, err = run_main(["export", "--ckpt_path", missing, "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and err == f"interdyn export: error: the checkpoint '{missing}' does not exist.\n"
    code, _, err = run_main(["evaluate", "--pred_dir", str(tmp_path / "none"), "--data", "x.tar"], capsys)
    assert code == 2 and err.startswith("interdyn evaluate: error: --pred_dir") and len(err.splitlines()) == 1

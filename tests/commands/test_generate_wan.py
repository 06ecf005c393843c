"""`interdyn generate` and `interdyn export` on the Wan2.2 TI2V backbone, with the tiny random Wan of
diffusers' own classes: what generate writes, how it finds the backbone, what it refuses, and that an
exported branch samples exactly as the branch it was exported from."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from interdyn.commands.backbone import BASE_FILE, backbone_of
from interdyn.commands.export import export_main
from interdyn.commands.generate import build_parser, generate, generate_main
from interdyn.commands.generate_wan import wan_clip_args, whole_latent_frames
from interdyn.errors import InputError
from interdyn.inputs import GenerationInputs, control_tensor
from interdyn.models.pipeline import image_to_tensor
from interdyn.models.wan import (
    InterDynWanPipeline,
    WanComponents,
    WanControlNetModel,
    get_wan,
    save_prompt_embeds,
    save_wan,
)
from interdyn.utils.render import to_uint8
from tests.helpers import decoded, write_generate_inputs
from tests.models.wan.helpers import randomize_projections_, tiny_branch

SIZE, FRAMES = 32, 5  # one token a frame, two latent frames: the cheapest clip Wan takes


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_generate_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Wan saved as the diffusers Wan2.2 TI2V folder is laid out."""
    folder = tmp_path_factory.mktemp("wan")
    save_wan(get_wan("random:wan-tiny"), folder)
    return folder


def acting_branch(wan: WanComponents) -> WanControlNetModel:
    """A tiny Wan branch that acts (non-zero projections; its fresh mask encoder seeded too)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        return randomize_projections_(tiny_branch(wan), seed=2)


@pytest.fixture(scope="module")
def branch_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`acting_branch`, saved by save_pretrained (no base recorded)."""
    folder = tmp_path_factory.mktemp("wan_branch")
    acting_branch(get_wan("random:wan-tiny")).save_pretrained(folder)
    return folder


def options(out: Path, *extra: str) -> list[str]:
    return [
        *("--height", str(SIZE), "--width", str(SIZE), "--num_frames", str(FRAMES), "--steps", "2"),
        *("--num_samples", "1", "--out", str(out), "--no_progress", "--device", "cpu", *extra),
    ]


@pytest.fixture(scope="module")
def branch_run(tmp_path_factory: pytest.TempPathFactory, files, branch_folder) -> tuple[Path, np.ndarray]:
    """Two samples with the tiny Wan and the acting branch (seed 3): the output folder and the videos."""
    out = tmp_path_factory.mktemp("branch_run")
    inputs = ["--image", str(files["image"]), "--control", str(files["hand"])]
    argv = inputs + ["--wan", "random:wan-tiny", "--controlnet", str(branch_folder), "--seed", "3"]
    return out, generate(argv + options(out, "--num_samples", "2")).videos["hand"]


def test_generate_with_the_tiny_wan_writes_the_video_and_its_settings(branch_run):
    out, videos = branch_run
    assert videos.shape == (2, FRAMES, SIZE, SIZE, 3) and videos.dtype == np.uint8
    assert not np.array_equal(videos[0], videos[1])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["scene_s0.mp4", "scene_s1.mp4", "scene_compare.mp4", "scene_sheet.png", "scene_settings.json"]
    )
    assert decoded(out / "scene_s0.mp4").shape == (FRAMES, SIZE, SIZE, 3)
    record = json.loads((out / "scene_settings.json").read_text())
    assert (record["backbone"], record["wan"], record["seed"], record["num_frames"]) == (
        "wan", "random:wan-tiny", 3, FRAMES,
    )  # fmt: skip
    assert record["sampling"] == {"num_inference_steps": 2, "conditioning_scale": 1.0, "guidance_scale": 1.0}
    assert record["prompt_embeds"].startswith("zeros") and "svd" not in record


def test_the_backbone_is_found_from_the_weights(tmp_path, files, wan_folder, branch_folder, branch_run):
    def backbone(**given: object) -> str:
        values = {"backbone": "auto", "wan": None, "svd": None, "controlnet": "rickakkerman/InterDyn"}
        return backbone_of(SimpleNamespace(**(values | given)))

    assert backbone() == "svd" and backbone(svd="random:tiny") == "svd"
    assert backbone(svd=str(wan_folder)) == backbone(controlnet=str(branch_folder)) == "wan"
    assert backbone(svd="random:wan-tiny") == backbone(backbone="wan") == "wan"
    with pytest.raises(InputError, match="is a Wan branch, but --backbone is svd"):
        backbone(backbone="svd", controlnet=str(branch_folder))
    # A saved Wan folder given where SVD's would go is sampled with the Wan backbone (the tiny preset's
    # weights); without the branch (--controlnet none) the same seed gives another video: the branch acts.
    argv = ["--image", str(files["image"]), "--control", str(files["hand"]), "--svd", str(wan_folder)]
    result = generate(argv + ["--controlnet", "none", "--seed", "3"] + options(tmp_path / "out"))
    assert result.videos["hand"].shape == (1, FRAMES, SIZE, SIZE, 3)
    assert not np.array_equal(result.videos["hand"][0], branch_run[1][0])
    record = json.loads((tmp_path / "out" / "scene_settings.json").read_text())
    assert record["backbone"] == "wan" and record["wan"] == str(wan_folder.resolve())


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--num_frames", "10"], "the clip has 10 frames, but Wan2.2 TI2V needs 1 + 4k frames"),
        (["--height", "48"], "multiples of 32: use e.g. 64x32"),
        (["--motion_bucket_id", "30"], "--motion_bucket_id is a setting of SVD's sampler"),
        (["--backbone", "svd", "--wan", "random:wan-tiny"], "--backbone is svd"),
        (["--guidance_scale", "3"], "--guidance_scale 3 needs a negative prompt embedding"),
        (["--guidance_scale", "0.5"], "--guidance_scale must be at least 1"),
        (
            ["--continuation", "context", "--num_frames", "13"],
            "--continuation context needs SVD's context branch",
        ),
        (
            ["--window_overlap", "5", "--num_frames", "13"],
            "--window_overlap sets the windows of a long video",
        ),
        (["--continuation", "hold", "--num_frames", "13"], "samples windows of 49 frames (--window_frames)"),
        (["--continuation", "hold", "--num_frames", "13", "--window_frames", "8"], "the window has 8 frames"),
        (
            [
                "--continuation",
                "chain",
                "--num_frames",
                "13",
                "--window_frames",
                "9",
                "--window_overlap",
                "4",
            ],
            "the overlap has 4 frames",
        ),
    ],
)
def test_what_the_wan_path_refuses_is_one_sentence(tmp_path, files, capsys, extra, words):
    argv = ["--image", str(files["image"]), "--control", str(files["hand"]), "--wan", "random:wan-tiny"]
    code = generate_main(argv + options(tmp_path / "out") + extra)
    err = capsys.readouterr().err
    assert code == 2 and words in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_svd_weights_named_for_wan_are_one_sentence(tmp_path, files, capsys, tiny_branch_folder):
    argv = ["--image", str(files["image"]), "--control", str(files["hand"]), "--backbone", "wan"]
    svd = ["--image", str(files["image"]), "--control", str(files["hand"]), "--svd", "random:tiny"]
    assert generate_main(svd + ["--guidance_scale", "3"] + options(tmp_path / "out")) == 2
    assert (
        "--guidance_scale is for the Wan backbone; SVD takes no text (its guidance is --min_guidance_scale"
        in (capsys.readouterr().err)
    )
    assert generate_main(argv + ["--svd", "random:tiny"] + options(tmp_path / "out")) == 2
    assert "--svd 'random:tiny' is not a Wan2.2 TI2V model" in capsys.readouterr().err
    assert generate_main(argv + ["--controlnet", str(tiny_branch_folder)] + options(tmp_path / "out")) == 2
    assert "holds a ControlNetSDVModel, not a Wan branch" in capsys.readouterr().err


def test_a_long_video_is_sampled_in_windows_and_recorded(tmp_path, files, branch_folder, capsys):
    """``--continuation hold`` with windows of 9 frames: the 13-frame video is the window loop's (one
    generator seeded with --seed, as one pass draws it), its settings record the windows; on SVD the Wan
    window option is one sentence."""
    from interdyn.models.wan.long import sample_wan_windows

    inputs = ["--image", str(files["image"]), "--control", str(files["hand"]), "--seed", "4"]
    argv = inputs + ["--wan", "random:wan-tiny", "--controlnet", str(branch_folder)]
    long = ["--continuation", "hold", "--window_frames", "9"]
    out = tmp_path / "long"
    result = generate(argv + long + options(out, "--num_frames", "13"))
    assert result.videos["hand"].shape == (1, 13, SIZE, SIZE, 3)
    assert "long video: 13 frames in 2 windows of 9 (overlap 5, continuation hold)" in capsys.readouterr().out
    record = json.loads((out / "scene_settings.json").read_text())
    assert (record["continuation"], record["model_window"], record["windows"]) == (
        "hold",
        9,
        [[0, 9], [4, 13]],
    )

    wan = get_wan("random:wan-tiny")
    pipe = InterDynWanPipeline.from_components(wan, acting_branch(wan))
    pipe.set_progress_bar_config(disable=True)
    frames = sample_wan_windows(
        pipe, image_to_tensor(result.inputs.image), torch.zeros(1, 512, 32),
        control_tensor(result.inputs.controls[0]), 9, 5, "hold", torch.Generator().manual_seed(4),
        num_inference_steps=2,
    ).frames  # fmt: skip
    np.testing.assert_array_equal(result.videos["hand"], to_uint8(frames.permute(0, 1, 3, 4, 2).numpy()))

    svd = ["--image", str(files["image"]), "--control", str(files["hand"]), "--svd", "random:tiny"]
    assert generate_main(svd + ["--window_frames", "9"] + options(tmp_path / "svd")) == 2
    assert "--window_frames is for the Wan backbone; SVD's window is its UNet's frame count" in (
        capsys.readouterr().err
    )


def test_a_driver_cut_short_keeps_whole_latent_frames(capsys):
    """A clip folder whose driver mask is shorter than the clip cuts it to its length; Wan keeps the first
    1 + 4k frames of it (and of the ground truth)."""
    masks = np.zeros((7, 8, 8), dtype=bool)
    truth = np.zeros((7, 8, 8, 3), dtype=np.uint8)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    inputs = GenerationInputs("clip", image, [masks], ["hand"], truth, 7.0, source_frames=list(range(7)))
    cut = whole_latent_frames(inputs)
    assert len(cut.controls[0]) == len(cut.truth) == len(cut.source_frames) == 5
    assert "the first 5 are taken" in capsys.readouterr().out and cut.notes
    assert whole_latent_frames(cut) is cut


def test_the_default_clip_length_becomes_wans(capsys):
    args = build_parser().parse_args(["--wan", "random:wan-tiny"])
    assert args.num_frames == 14 and wan_clip_args(args).num_frames == 13  # SVD's 14 is not 1 + 4k
    assert "clip: 13 frames" in capsys.readouterr().out
    args = build_parser().parse_args(["--wan", "random:wan-tiny", "--num_frames", "49"])
    assert wan_clip_args(args) is args


def test_an_exported_branch_samples_as_the_branch_itself(tmp_path, files, branch_folder, capsys):
    exported = tmp_path / "exported"
    argv = ["--ckpt_path", str(branch_folder), "--wan", "random:wan-tiny", "--out", str(exported)]
    assert export_main(argv) == 0
    assert f"interdyn generate --controlnet {exported}" in capsys.readouterr().out
    assert sorted(p.name for p in exported.iterdir()) == sorted(
        ["config.json", "diffusion_pytorch_model.safetensors", BASE_FILE]
    )
    assert json.loads((exported / BASE_FILE).read_text())["base"] == "random:wan-tiny"
    # The exported folder names its base: --controlnet alone picks the backbone and the base. The prompt
    # embedding comes from a file.
    prompt = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(0))
    save_prompt_embeds(prompt, tmp_path / "prompt.safetensors", prompt="a hand pushes a cup")
    inputs = ["--image", str(files["image"]), "--control", str(files["hand"]), "--seed", "5"]
    inputs += ["--prompt_embeds", str(tmp_path / "prompt.safetensors")]
    result = generate(inputs + ["--controlnet", str(exported)] + options(tmp_path / "out"))
    record = json.loads((tmp_path / "out" / "scene_settings.json").read_text())
    assert record["prompt_embeds"] == str(tmp_path / "prompt.safetensors")

    wan = get_wan("random:wan-tiny")
    pipe = InterDynWanPipeline.from_components(wan, acting_branch(wan))  # the branch in memory
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(
        image_to_tensor(result.inputs.image),
        prompt,
        control=control_tensor(result.inputs.controls[0]),
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
    ).frames
    np.testing.assert_array_equal(result.videos["hand"], to_uint8(frames))
    # Prompt guidance away from a negative embedding: the pipeline's guided frames, recorded in the settings.
    negative = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1))
    save_prompt_embeds(negative, tmp_path / "negative.safetensors", prompt="blurry, static")
    guided_args = [
        "--guidance_scale",
        "3",
        "--negative_prompt_embeds",
        str(tmp_path / "negative.safetensors"),
    ]
    guided = generate(inputs + guided_args + ["--controlnet", str(exported)] + options(tmp_path / "guided"))
    frames = pipe(
        image_to_tensor(result.inputs.image), prompt, control=control_tensor(result.inputs.controls[0]),
        negative_prompt_embeds=negative, guidance_scale=3.0, num_inference_steps=2,
        generator=torch.Generator().manual_seed(5), output_type="np",
    ).frames  # fmt: skip
    np.testing.assert_array_equal(guided.videos["hand"], to_uint8(frames))
    assert not np.array_equal(guided.videos["hand"], result.videos["hand"])
    record = json.loads((tmp_path / "guided" / "scene_settings.json").read_text())
    assert record["negative_prompt_embeds"] == guided_args[-1] and record["sampling"]["guidance_scale"] == 3.0
    # A prompt embedding of another width is one sentence.
    save_prompt_embeds(torch.zeros(1, 8, 16), tmp_path / "narrow.safetensors")
    inputs[-1] = str(tmp_path / "narrow.safetensors")
    assert generate_main(inputs + ["--controlnet", str(exported)] + options(tmp_path / "c")) == 2
    assert "this Wan base takes (1, length, 32)" in capsys.readouterr().err
    # Exporting over it again needs --overwrite, which replaces the earlier export.
    assert export_main(argv) == 2
    assert export_main([*argv, "--overwrite"]) == 0


@pytest.mark.slow
def test_a_wan_run_exports_and_generates_from_its_checkpoint(tmp_path, files, capsys):
    """One training step of the tiny Wan module (its checkpoint names the backbone and the base): generate
    reads the .ckpt itself (its sampling steps too), and its export gives the same frames."""
    from tests.training.wan.helpers import quiet_trainer, tiny_wan_module, toy_data

    module = tiny_wan_module(sampling={"num_inference_steps": 2, "conditioning_scale": 0.5})
    trainer = quiet_trainer(max_steps=1, default_root_dir=tmp_path)
    trainer.fit(module, toy_data(num_train=2, batch_size=1))
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)

    exported = tmp_path / "exported"
    assert export_main(["--ckpt_path", str(ckpt), "--out", str(exported)]) == 0
    record = json.loads((exported / BASE_FILE).read_text())
    assert record["base"] == "random:wan-tiny" and record["sampling"]["conditioning_scale"] == 0.5
    inputs = ["--image", str(files["image"]), "--control", str(files["hand"])]
    size = ["--height", str(SIZE), "--width", str(SIZE), "--num_frames", str(FRAMES), "--no_progress"]
    from_ckpt = generate(inputs + size + ["--controlnet", str(ckpt), "--out", str(tmp_path / "a")])
    assert from_ckpt.settings == {"num_inference_steps": 2, "conditioning_scale": 0.5, "guidance_scale": 1.0}
    from_export = generate(inputs + size + ["--controlnet", str(exported), "--out", str(tmp_path / "b")])
    np.testing.assert_array_equal(from_ckpt.videos["hand"], from_export.videos["hand"])
    # An SVD checkpoint where a Wan branch is wanted is one sentence.
    code = generate_main(
        inputs + size + ["--wan", "random:wan-tiny", "--controlnet", str(files["foreign_ckpt"])]
    )
    assert code == 2


def test_a_runs_prompt_guidance_is_recorded_and_generate_uses_it(tmp_path, files, branch_folder, capsys):
    """A run trained with ``sampling.guidance_scale`` and ``negative_prompt_embeds``: its export records both,
    and generate samples with them by default as with the options given; a negative embedding while guidance
    is off, and guidance asked of a branch folder that records no negative embedding, are one sentence
    before any weights are read."""
    from interdyn.commands.backbone import save_wan_branch, wan_branch_from_checkpoint
    from tests.training.wan.helpers import tiny_wan_module

    noise = torch.Generator().manual_seed(0)
    for name in ("prompt", "negative"):
        save_prompt_embeds(torch.randn(1, 8, 32, generator=noise), tmp_path / f"{name}.safetensors")
    prompt, negative = str(tmp_path / "prompt.safetensors"), str(tmp_path / "negative.safetensors")
    module = tiny_wan_module(
        prompt_embeds=prompt, negative_prompt_embeds=negative,
        sampling={"num_inference_steps": 2, "guidance_scale": 3.0},
    )  # fmt: skip
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    branch, record = wan_branch_from_checkpoint(checkpoint)
    assert record["negative_prompt_embeds"] == negative and record["sampling"]["guidance_scale"] == 3.0
    exported = save_wan_branch(branch, tmp_path / "exported", record["base"], record)

    inputs = ["--image", str(files["image"]), "--control", str(files["hand"]), "--controlnet", str(exported)]
    recorded = generate(inputs + options(tmp_path / "a"))
    assert "guidance 3 from " + negative in capsys.readouterr().out
    explicit = generate(
        inputs + ["--guidance_scale", "3", "--negative_prompt_embeds", negative] + options(tmp_path / "b")
    )
    unguided = generate(inputs + ["--guidance_scale", "1"] + options(tmp_path / "c"))
    np.testing.assert_array_equal(recorded.videos["hand"], explicit.videos["hand"])
    assert not np.array_equal(recorded.videos["hand"], unguided.videos["hand"])
    settings = json.loads((tmp_path / "a" / "scene_settings.json").read_text())
    assert settings["negative_prompt_embeds"] == negative and settings["sampling"]["guidance_scale"] == 3.0

    capsys.readouterr()
    off = ["--guidance_scale", "1", "--negative_prompt_embeds", negative]
    assert generate_main(inputs + off + options(tmp_path / "d")) == 2
    assert "which is off (guidance scale 1)" in capsys.readouterr().err
    plain = [
        "--image",
        str(files["image"]),
        "--control",
        str(files["hand"]),
        "--controlnet",
        str(branch_folder),
    ]
    assert (
        generate_main(plain + ["--wan", "random:wan-tiny", "--guidance_scale", "3"] + options(tmp_path / "e"))
        == 2
    )
    assert "needs a negative prompt embedding" in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()

"""``interdyn prompt``: a text prompt encoded once into the Wan backbone's prompt embedding file, from the
tokenizer and text encoder of a Wan folder. A real tiny UMT5 encoder and a real word-level fast tokenizer,
saved in the layout of Wan-AI/Wan2.2-TI2V-5B-Diffusers (``text_encoder/`` and ``tokenizer/``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from interdyn.models.wan.prompt import encode_prompt, load_prompt_embeds
from interdyn.training.wan_setup import fixed_prompt_embeds

D_MODEL = 32
WORDS = "a an the hand finger pushes pulls lifts cup ball box red blue on off table floor".split()
PROMPT = "a hand pushes a cup"  # 5 words + </s>: 6 tokens


def _save_tiny_tokenizer(folder: Path) -> None:
    """A word-level fast tokenizer (pad 0, end-of-text 1, unknown 2) that ends every text with ``</s>``, as
    Wan's T5 tokenizer does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)


def _save_tiny_encoder(folder: Path) -> None:
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=len(WORDS) + 3, d_model=D_MODEL, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    UMT5EncoderModel(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def wan_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Wan folder holding only ``tokenizer/`` and ``text_encoder/`` (all the command reads)."""
    root = tmp_path_factory.mktemp("prompt") / "wan"
    _save_tiny_tokenizer(root / "tokenizer")
    _save_tiny_encoder(root / "text_encoder")
    return root


def _direct(wan_text: Path, prompt: str, length: int = 512) -> torch.Tensor:
    """``encode_prompt`` on the same tokenizer and encoder, loaded without the command."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(wan_text, subfolder="tokenizer")
    encoder = UMT5EncoderModel.from_pretrained(wan_text, subfolder="text_encoder", dtype=torch.float32)
    return encode_prompt(prompt, tokenizer, encoder.eval(), length)


def _prompt(run, wan: Path | str, prompt: str, out: Path, *more: str):
    return run(
        "prompt", "--wan", str(wan), "--prompt", prompt, "--out", str(out), "--device", "cpu",
        "--dtype", "float32", *more, cwd=next(p for p in out.parents if p.is_dir()),
    )  # fmt: skip


def test_the_tiny_tokenizer_loads_back_and_ends_texts_as_wans_does(wan_text):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(wan_text, subfolder="tokenizer")
    assert tokenizer(PROMPT).input_ids == [3, 6, 8, 3, 11, 1]
    assert tokenizer("").input_ids == [1] and tokenizer.pad_token_id == 0


def test_the_file_is_the_prompt_encoded_as_encode_prompt_does(run, wan_text, tmp_path):
    out = tmp_path / "prompts" / "push.safetensors"  # its folder is made
    done = _prompt(run, wan_text, PROMPT, out)
    assert done.returncode == 0, done.stderr
    embeds = load_prompt_embeds(out)
    assert embeds.shape == (1, 512, D_MODEL) and embeds.dtype == torch.float32
    assert torch.equal(embeds, _direct(wan_text, PROMPT))
    assert (embeds[0, :6].abs().sum(-1) > 0).all() and not embeds[0, 6:].any()  # padding is zero
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == {"prompt": PROMPT}
    assert sorted(p.name for p in out.parent.iterdir()) == ["push.safetensors"]  # no temporary left
    assert str(out) in done.stdout and f"(1, 512, {D_MODEL})" in done.stdout
    assert "text encoder loaded in" in done.stdout and "--prompt_embeds" in done.stdout
    # what `interdyn fit` reads with model.init_args.prompt_embeds, for a transformer of this text width
    assert torch.equal(fixed_prompt_embeds(str(out), D_MODEL), embeds)


def test_different_prompts_give_different_files_and_the_empty_prompt_is_its_end_token(
    run, wan_text, tmp_path
):
    files = {}
    for name, prompt in (("push", PROMPT), ("pull", "a finger pulls the red ball"), ("empty", "")):
        done = _prompt(run, wan_text, prompt, tmp_path / f"{name}.safetensors", "--length", "16")
        assert done.returncode == 0, done.stderr
        files[name] = load_prompt_embeds(tmp_path / f"{name}.safetensors")
        assert files[name].shape == (1, 16, D_MODEL)
    assert not torch.allclose(files["push"], files["pull"])
    empty = files["empty"]
    assert empty[0, 0].abs().sum() > 0 and not empty[0, 1:].any()  # </s>, then zero padding
    assert torch.equal(empty, _direct(wan_text, "", 16))
    with safe_open(str(tmp_path / "empty.safetensors"), "pt") as f:
        assert f.metadata() == {"prompt": ""}


def test_a_prompt_longer_than_the_context_is_cut_and_said(run, wan_text, tmp_path):
    out = tmp_path / "long.safetensors"
    done = _prompt(run, wan_text, PROMPT, out, "--length", "4")
    assert done.returncode == 0, done.stderr
    assert "the prompt is 6 tokens; only its first 4 are encoded" in done.stdout
    embeds = load_prompt_embeds(out)
    assert embeds.shape == (1, 4, D_MODEL) and (embeds[0].abs().sum(-1) > 0).all()


def test_an_existing_file_is_replaced_only_with_overwrite(run, wan_text, tmp_path):
    out = tmp_path / "push.safetensors"
    out.write_bytes(b"earlier")
    refused = _prompt(run, wan_text, PROMPT, out)
    assert refused.returncode == 2 and out.read_bytes() == b"earlier"
    assert "already exists; pass --overwrite" in refused.stderr
    # a failure after the checks leaves the earlier file as it was
    broken = _prompt(run, tmp_path / "no-such-wan", PROMPT, out, "--overwrite")
    assert broken.returncode == 2 and out.read_bytes() == b"earlier"
    done = _prompt(run, wan_text, PROMPT, out, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert torch.equal(load_prompt_embeds(out), _direct(wan_text, PROMPT))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["push.safetensors"]


def _half_folder(tmp_path: Path, wan_text: Path, keep: str) -> Path:
    """A Wan folder with only one of ``tokenizer/`` and ``text_encoder/``, each file a link to the full one's."""
    folder = tmp_path / f"only-{keep}"
    (folder / keep).mkdir(parents=True)
    for file in (wan_text / keep).iterdir():
        (folder / keep / file.name).symlink_to(file)
    return folder


@pytest.mark.parametrize(
    "case, phrase",
    [
        ("missing folder", "Could not load the Wan tokenizer from"),
        ("no tokenizer", "tokenizer_config.json' is missing"),
        ("no text encoder", "Could not load the Wan text encoder"),
        ("no encoder weights", "the files are unreadable or incomplete"),
        ("hub id offline", "HF_HUB_OFFLINE=1 forbids downloads"),
        ("out is a folder", "is a folder; name the file to write"),
        ("length 0", "--length must be at least 1 token"),
    ],
)
def test_each_bad_input_is_one_sentence_with_exit_code_2(case, phrase, run, wan_text, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    wan, out, more = wan_text, tmp_path / "out.safetensors", []
    if case == "missing folder":
        wan = tmp_path / "no-such-wan"
    elif case == "no tokenizer":
        wan = _half_folder(tmp_path, wan_text, "text_encoder")
    elif case == "no text encoder":
        wan = _half_folder(tmp_path, wan_text, "tokenizer")
    elif case == "no encoder weights":
        wan = _half_folder(tmp_path, wan_text, "tokenizer")
        (wan / "text_encoder").mkdir()
        (wan / "text_encoder" / "config.json").write_text(
            (wan_text / "text_encoder" / "config.json").read_text()
        )
    elif case == "hub id offline":
        wan = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    elif case == "out is a folder":
        out = tmp_path / "prompts"
        out.mkdir()
    else:
        more = ["--length", "0"]
    done = _prompt(run, wan, PROMPT, out, *more)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("interdyn prompt: error: ") and phrase in lines[-1], done.stderr
    assert "Traceback" not in done.stderr and "wrote" not in done.stdout
    if case != "out is a folder":
        assert not out.exists()
    if case in ("missing folder", "no tokenizer", "no text encoder", "hub id offline"):
        assert "hf download Wan-AI/Wan2.2-TI2V-5B-Diffusers" in lines[-1]  # how to get Wan

"""``interdyn prompt``: a text prompt encoded once into the fixed prompt embedding file of the Wan backbone.

InterDyn on Wan has no text: the transformer's text context is one embedding, zeros unless a file names
another (:mod:`interdyn.models.wan.prompt`). This command loads only the tokenizer and the text encoder
(UMT5) of a Wan2.2 diffusers folder or hub id, encodes the prompt as Wan's pipelines do and writes the
file that ``interdyn fit`` (``--model.init_args.prompt_embeds``), ``interdyn generate --prompt_embeds``
and the app read:

    interdyn prompt --wan checkpoints/wan2.2-ti2v-5b --prompt "a hand pushes a cup" --out prompts/push.safetensors

``--prompt ""`` is the empty prompt as Wan encodes it (its end-of-text token, then zero padding).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch

from interdyn.commands.generate_wan import wan_dtype
from interdyn.commands.parsers import call_with, command_parser, resolve_device, run_command
from interdyn.errors import InputError
from interdyn.models.wan.components import WAN_TI2V_REPO
from interdyn.models.wan.prompt import WAN_PROMPT_LENGTH, encode_prompt, load_text_encoder, save_prompt_embeds
from interdyn.utils.files import unwritable_reason


def check_prompt_target(out: str | Path, overwrite: bool, length: int) -> Path:
    """The file to write, as an absolute path, once it is safe to: a new file in a folder that can be written
    (made where missing), or with ``overwrite`` an existing file; never a folder. Checked before the text
    encoder is loaded."""
    if length < 1:
        raise InputError(f"--length must be at least 1 token, got {length}.")
    given, target = out, Path(out).expanduser().resolve()
    if target.is_dir():
        raise InputError(
            f"--out '{given}' is a folder; name the file to write (e.g. prompts/push.safetensors)."
        )
    if target.exists() and not overwrite:
        raise InputError(f"--out '{given}' already exists; pass --overwrite to replace it.")
    reason = unwritable_reason(target.parent)
    if reason is not None:
        raise InputError(f"--out '{given}' cannot be written: {reason}.")
    return target


def _token_count(tokenizer: Any, prompt: str) -> int:
    """How many tokens ``prompt`` is, its end-of-text token included, before any truncation."""
    return len(tokenizer(prompt, add_special_tokens=True).input_ids)


def encode_to_file(
    prompt: str, out: Path, wan: str, device: torch.device, dtype: torch.dtype, length: int
) -> torch.Tensor:
    """Load the tokenizer and text encoder of ``wan``, encode ``prompt`` to ``(1, length, text_dim)`` and write it
    (with the prompt as metadata) to ``out``; prints what was written and how long each part took."""
    started = time.perf_counter()
    tokenizer, encoder = load_text_encoder(wan, torch_dtype=dtype)
    encoder.to(device)
    loaded = time.perf_counter()
    tokens = _token_count(tokenizer, prompt)
    if tokens > length:
        print(f"note: the prompt is {tokens} tokens; only its first {length} are encoded (--length)")
    embeds = encode_prompt(prompt, tokenizer, encoder, length)
    encoded = time.perf_counter()
    save_prompt_embeds(embeds, out, prompt=prompt)
    shown = repr(prompt) if prompt else "the empty prompt"
    print(
        f"wrote {out}: prompt embedding of shape {tuple(embeds.shape)} (float32) for {shown}, "
        f"{min(tokens, length)} of {length} tokens, encoded on {device} in {str(dtype).removeprefix('torch.')} "
        f"(text encoder loaded in {loaded - started:.1f} s, prompt encoded in {encoded - loaded:.1f} s)"
    )
    return embeds


def prompt_command(
    prompt: str,
    out: str,
    wan: str = WAN_TI2V_REPO,
    device: str = "auto",
    dtype: Literal["auto", "bfloat16", "float32"] = "auto",
    length: int = WAN_PROMPT_LENGTH,
    overwrite: bool = False,
) -> Path:
    """Encode a text prompt once into the fixed prompt embedding file of the Wan backbone (safetensors, shape
    (1, length, text_dim)), read by `interdyn fit` (--model.init_args.prompt_embeds), `interdyn generate
    --prompt_embeds` and the app. Only the tokenizer and text encoder of the Wan folder are loaded.

    Args:
        prompt: the text to encode; "" is the empty prompt as Wan encodes it
        out: the safetensors file to write (its folder is created)
        wan: a Wan2.2 diffusers folder (tokenizer/ and text_encoder/, as in Wan-AI/Wan2.2-TI2V-5B-Diffusers)
            or a hub id
        device: where the text encoder runs: auto (CUDA when available), cpu, cuda or cuda:<index>
        dtype: the text encoder's dtype: auto (bfloat16 on CUDA, float32 on CPU), bfloat16 or float32; the
            file is float32 either way
        length: the text context length in tokens (Wan's pipelines pad every prompt to 512)
        overwrite: replace an existing --out file
    """
    target = check_prompt_target(out, overwrite, length)  # before loading gigabytes of text encoder
    where = resolve_device(device)
    encode_to_file(prompt, target, wan, where, wan_dtype(dtype, where), length)
    print(
        f"use it with: interdyn fit ... --model.init_args.prompt_embeds {target}, "
        f"or interdyn generate ... --prompt_embeds {target}"
    )
    return target


def prompt_main(argv: list[str]) -> int:
    """``interdyn prompt``: returns the exit code (2 with one sentence on stderr for user errors)."""
    parser = command_parser(prompt_command, "interdyn prompt")
    return run_command("interdyn prompt", parser, lambda args: call_with(prompt_command, args), argv)


if __name__ == "__main__":
    sys.exit(prompt_main(sys.argv[1:]))

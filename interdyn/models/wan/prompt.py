"""The fixed prompt embedding of InterDyn on Wan: InterDyn has no text, so the transformer's text context is
one embedding computed once and cached, and the text encoder (UMT5-XXL, about 11 GB) is never held while
training or sampling.

By default the embedding is all zeros (:func:`zero_prompt_embeds`): a neutral context that needs no text
encoder at all. The user's own prompt (or the empty prompt as Wan encodes it: its end-of-text token, then
zero padding) is encoded once by :func:`encode_prompt` and stored with :func:`save_prompt_embeds`; the
tokenizer and text encoder of a Wan folder are loaded by :func:`load_text_encoder` (``interdyn prompt`` does
all three).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from interdyn.errors import WeightsNotFoundError
from interdyn.models.hub import load_component
from interdyn.models.wan.components import HOW_TO_GET_WAN, WAN_TI2V_REPO
from interdyn.utils.files import write_atomic

# Wan's text context length (its pipelines pad every prompt to 512 tokens).
WAN_PROMPT_LENGTH = 512


def zero_prompt_embeds(
    text_dim: int, length: int = WAN_PROMPT_LENGTH, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The default fixed prompt embedding: zeros ``(1, length, text_dim)``."""
    return torch.zeros(1, length, text_dim, dtype=dtype)


@torch.no_grad()
def encode_prompt(
    prompt: str, tokenizer: Any, text_encoder: Any, length: int = WAN_PROMPT_LENGTH
) -> torch.Tensor:
    """Encode ``prompt`` as Wan's pipelines do: tokens padded to ``length``, the encoder's last hidden state
    with the padding positions set to zero -> ``(1, length, text_dim)`` float32."""
    inputs = tokenizer(
        [prompt], padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
        return_attention_mask=True, return_tensors="pt",
    )  # fmt: skip
    device = next(text_encoder.parameters()).device
    mask = inputs.attention_mask.to(device)
    hidden = text_encoder(inputs.input_ids.to(device), mask).last_hidden_state
    return (hidden * mask.unsqueeze(-1).to(hidden.dtype)).float().cpu()


def load_text_encoder(path: str = WAN_TI2V_REPO, torch_dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """The tokenizer and text encoder (UMT5, in eval mode, in ``torch_dtype``) of a Wan diffusers folder or hub
    id (its ``tokenizer/`` and ``text_encoder/``), for :func:`encode_prompt`. The tokenizer is loaded first (it
    is small), so that a folder without one fails before the encoder's gigabytes are read; anything missing is
    a :class:`~interdyn.errors.WeightsNotFoundError` saying how to get Wan."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    kw: dict[str, Any] = {"dtype": torch_dtype} if torch_dtype is not None else {}
    try:
        tokenizer = load_component(
            AutoTokenizer, path, subfolder="tokenizer", what="Wan tokenizer", kind="wan", strict=False,
            marker="tokenizer_config.json",
        )  # fmt: skip
        encoder = load_component(
            UMT5EncoderModel, path, subfolder="text_encoder", what="Wan text encoder", kind="wan", **kw
        )
    except WeightsNotFoundError as err:
        raise WeightsNotFoundError(f"{err} {HOW_TO_GET_WAN}") from None
    return tokenizer, encoder.eval()


def save_prompt_embeds(embeds: torch.Tensor, path: str | Path, prompt: str = "") -> None:
    """Store a prompt embedding ``(1, S, D)`` (and the prompt it encodes, as metadata) in a safetensors file
    (made with its folder; written through a temporary sibling and renamed, so that an interrupted write
    leaves no half-written file under ``path``)."""
    data = save({"prompt_embeds": embeds.contiguous().cpu()}, metadata={"prompt": prompt})
    write_atomic(path, data)


def load_prompt_embeds(path: str | Path) -> torch.Tensor:
    """Read a prompt embedding written by :func:`save_prompt_embeds`."""
    tensors = load_file(str(path))
    if "prompt_embeds" not in tensors:
        raise ValueError(f"{path} holds no 'prompt_embeds' tensor (tensors: {sorted(tensors)})")
    return tensors["prompt_embeds"]

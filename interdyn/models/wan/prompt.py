"""The fixed prompt embedding of InterDyn on Wan: InterDyn has no text, so the transformer's text context is
one embedding computed once and cached, and the text encoder (UMT5-XXL, about 11 GB) is never held while
training or sampling.

By default the embedding is all zeros (:func:`zero_prompt_embeds`): a neutral context that needs no text
encoder at all. The user's own prompt (or the empty prompt as Wan encodes it: its end-of-text token, then
zero padding) is encoded once by :func:`encode_prompt` and stored with :func:`save_prompt_embeds`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

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


def save_prompt_embeds(embeds: torch.Tensor, path: str | Path, prompt: str = "") -> None:
    """Store a prompt embedding ``(1, S, D)`` (and the prompt it encodes, as metadata) in a safetensors file."""
    save_file({"prompt_embeds": embeds.contiguous().cpu()}, str(path), metadata={"prompt": prompt})


def load_prompt_embeds(path: str | Path) -> torch.Tensor:
    """Read a prompt embedding written by :func:`save_prompt_embeds`."""
    tensors = load_file(str(path))
    if "prompt_embeds" not in tensors:
        raise ValueError(f"{path} holds no 'prompt_embeds' tensor (tensors: {sorted(tensors)})")
    return tensors["prompt_embeds"]

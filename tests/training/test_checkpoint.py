"""The branch inside a Lightning checkpoint: written as the module writes it, read back without Lightning."""

from __future__ import annotations

import pytest
import torch

from interdyn.errors import InputError, WeightsMismatchError
from interdyn.training.checkpoint import (
    BRANCH_PREFIX,
    CONFIG_KEY,
    branch_from_checkpoint,
    keep_branch_only,
    load_branch,
)


def _checkpoint(branch: torch.nn.Module) -> dict:
    """A checkpoint dict as Lightning hands it to ``on_save_checkpoint``: the branch and a frozen part."""
    state = {BRANCH_PREFIX + k: v.clone() for k, v in branch.state_dict().items()}
    state["unet.conv_in.weight"] = torch.zeros(1)
    checkpoint = {"state_dict": state, "hyper_parameters": {"svd": "random:tiny", "fps_id": 6, "lr": 1e-5}}
    keep_branch_only(checkpoint, branch)
    return checkpoint


def test_written_branch_reads_back_exactly(tmp_path, trained_like_branch) -> None:
    checkpoint = _checkpoint(trained_like_branch)
    assert not [k for k in checkpoint["state_dict"] if not k.startswith(BRANCH_PREFIX)], (
        "frozen weights dropped"
    )
    assert checkpoint[CONFIG_KEY]["conditioning_channels"] == trained_like_branch.config.conditioning_channels
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    branch, settings = load_branch(str(path), torch_dtype=torch.bfloat16)
    assert settings == {"svd": "random:tiny", "fps_id": 6}, "the SVD source and sampling settings only"
    for name, value in trained_like_branch.state_dict().items():
        loaded = branch.state_dict()[name]
        assert loaded.dtype == torch.bfloat16 and torch.equal(loaded, value.to(torch.bfloat16)), name


def test_a_branch_unlike_its_config_is_refused(tmp_path, trained_like_branch) -> None:
    checkpoint = _checkpoint(trained_like_branch)
    name = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][name] = checkpoint["state_dict"][name][:1]
    with pytest.raises(WeightsMismatchError, match=rf"other shapes \['{name[len(BRANCH_PREFIX) :]}'\]"):
        branch_from_checkpoint(checkpoint)
    del checkpoint["state_dict"][name]
    with pytest.raises(WeightsMismatchError, match=r"missing \["):
        branch_from_checkpoint(checkpoint)
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(InputError, match="not a checkpoint of an interdyn training run"):
        load_branch(str(tmp_path / "other.ckpt"))

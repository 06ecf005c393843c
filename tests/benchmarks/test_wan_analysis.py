"""benchmarks/wan_analysis.py: the full-size Wan2.2 TI2V-5B parts it counts, what each strategy keeps per
GPU, and (slow) the fake-tensor step it measures: checkpointing saves activations and costs FLOPs."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
spec = importlib.util.spec_from_file_location("wan_analysis", REPO_ROOT / "benchmarks" / "wan_analysis.py")
wan_analysis = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wan_analysis)
from train_analysis import StepMemory  # noqa: E402
from wan_recipes import WAN_RECIPES  # noqa: E402

GIB = 2**30


@pytest.fixture(scope="module")
def sizes():
    return wan_analysis.parameter_bytes()


def test_full_size_parts_in_their_training_dtypes(sizes):
    # the counts docs/backbones.md gives; the transformer in bf16 but for the ~11 M float32-kept weights
    assert sizes["transformer_params"] == 4_999_787_712
    assert sizes["branch_params"] == 2_609_983_456
    assert sizes["vae_params"] == 704_688_668 and sizes["vae_bytes"] == 4 * 704_688_668
    kept = sizes["transformer_bytes"] - 2 * sizes["transformer_params"]
    assert 5e6 < kept / 2 < 20e6  # float32 norms, time embedder, modulation tables
    assert sizes["block_params"] == 163_656_704


def test_each_strategy_keeps_its_share_per_gpu(sizes):
    ddp = wan_analysis.static_parts(WAN_RECIPES["2x80gb"], sizes)
    fsdp = wan_analysis.static_parts(WAN_RECIPES["2x80gb-fsdp"], sizes)
    single = wan_analysis.static_parts(WAN_RECIPES["48gb"], sizes)
    cached = wan_analysis.static_parts(WAN_RECIPES["48gb+cache"], sizes)
    offload = wan_analysis.static_parts(WAN_RECIPES["48gb-fsdp-offload"], sizes)
    branch = sizes["branch_params"]
    assert ddp["branch"] == ddp["gradients"] == 4 * branch and ddp["optimizer_state"] == 8 * branch
    for key in ("frozen", "branch", "gradients", "optimizer_state"):
        assert fsdp[key] == pytest.approx(ddp[key] / 2)  # full shard over 2 GPUs
        assert offload[key] == 0  # everything in host memory
    assert fsdp["vae"] == ddp["vae"] == sizes["vae_bytes"]  # the VAE encodes in the step: not sharded
    assert (
        single["optimizer_state"] == 0 and single["vae"] == sizes["vae_bytes"]
    )  # Adam's moments on the host
    assert cached["vae"] == 0  # cached latents: the VAE off the device
    assert single["frozen"] == ddp["frozen"]


def test_a_row_adds_the_largest_transient_to_the_static_parts(sizes):
    step = StepMemory(activations=4 * GIB, weight_copies=5 * GIB, largest=GIB // 2, flops_step=300 * 10**12)
    vae = (3 * GIB, 70 * 10**12)
    clip = {"frames": 49, "height": 480, "width": 832}
    row = wan_analysis.memory_row("2x80gb", WAN_RECIPES["2x80gb"], sizes, step, vae, 2 * GIB, clip)
    static = sum(wan_analysis.static_parts(WAN_RECIPES["2x80gb"], sizes).values())
    # the end of the forward (activations + weight copies: 9 GiB) outweighs the backward (4 + 2 + 1.5)
    assert row["estimate_gib"] == pytest.approx(static / GIB + 9)
    assert row["with_context_gib"] == pytest.approx(row["estimate_gib"] * 1.1 + 0.5)
    assert row["tflop_per_sample"] == pytest.approx(370 / 2) and row["tflop_vae_per_sample"] == 35
    fsdp = wan_analysis.memory_row("f", WAN_RECIPES["2x80gb-fsdp"], sizes, step, vae, 2 * GIB, clip)
    assert fsdp["weight_copies_gib"] == 0 and fsdp["fsdp_units_gib"] > 0  # bf16 gathered, nothing to cast
    cached = wan_analysis.memory_row("c", WAN_RECIPES["48gb+cache"], sizes, step, vae, 2 * GIB, clip)
    assert cached["tflop_vae_per_sample"] == 0 and cached["encoder_peak_gib"] == 0
    assert row["fits"] == (row["with_context_gib"] <= 79.1)


@pytest.mark.slow  # four passes of the full-size model on fake tensors (a minute on 2 cores)
def test_checkpointing_saves_activations_and_costs_a_forward():
    clip = {"frames": 5, "height": 64, "width": 64}
    with wan_analysis.simulated(), wan_analysis.keyword_attention():
        plain = wan_analysis.measure("cpu", False, 1, clip, backward=True)
        ckpt = wan_analysis.measure("cpu", True, 1, clip, backward=True)
        cuda = wan_analysis.measure("cuda", True, 1, clip, backward=False)
    assert ckpt.activations < plain.activations / 4
    assert ckpt.flops_forward == plain.flops_forward
    # the recomputation adds about one forward of the blocks
    assert 0.7 * plain.flops_forward < ckpt.flops_step - plain.flops_step < 1.05 * plain.flops_forward
    # autocast's cached bf16 copies of the float32 branch weights: about 2 bytes per branch parameter
    assert cuda.weight_copies == pytest.approx(2 * 2_609_983_456, rel=0.1)

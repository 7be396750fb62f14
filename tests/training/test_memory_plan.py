"""`memory_plan` against the measured host-memory peak of CPU training steps, and its sharding arithmetic."""

from __future__ import annotations

import pytest
from memory_measure import measurement_supported, run_isolated

from internimage_hf.training.memory_plan import ActivationProfile, measure_activation_profile, plan_memory
from internimage_hf.training.models import preset_config

requires_proc_memory = pytest.mark.skipif(
    not measurement_supported(), reason="needs Linux /proc/self/status VmHWM and clear_refs"
)


CASES = [(128, 2, "fp32", False), (128, 2, "fp32", True), (96, 4, "bf16", False)]


@pytest.fixture(scope="module")
def measured_peaks():
    """Peak host memory of a real CPU training step (InternImage-T layout) per case, in one fresh process."""
    cases = [
        {
            "model": "t", "overrides": {"num_labels": 10}, "image_size": size, "batch_size": batch,
            "precision": precision, "gradient_checkpointing": checkpointing,
        }
        for size, batch, precision, checkpointing in CASES
    ]  # fmt: skip
    results = run_isolated("measure_training_step", {"cases": cases})
    return {case: result["peak_bytes"] for case, result in zip(CASES, results, strict=True)}


@requires_proc_memory
@pytest.mark.parametrize("case", CASES, ids=[f"{s}px-b{b}-{p}-ckpt{int(c)}" for s, b, p, c in CASES])
def test_prediction_within_ten_percent_of_measured_cpu_peak(case, measured_peaks):
    image_size, batch_size, precision, checkpointing = case
    # The planner calibrates activations at 64/96 px with batch 1 and extrapolates. The CPU run follows CPU
    # autocast, so calibrate with it (GPU plans use CUDA's float32 op list).
    config = preset_config("t", num_labels=10)
    profile = measure_activation_profile(config, precision, autocast_policy="cpu")
    plan = plan_memory(
        config, image_size, batch_size, precision, "ddp", checkpointing, 1, profile=profile, foreach_optimizer=False
    )
    measured = measured_peaks[case]
    assert abs(plan.peak - measured) <= 0.10 * measured, (plan.gib(), measured / 2**30)


def _flat_profile() -> ActivationProfile:
    # 100 bytes per pixel per block, nothing elsewhere: keeps the arithmetic checks independent of calibration.
    return ActivationProfile(
        block=[(0.0, 100.0)] * 4, post_norm=(0.0, 0.0), rest=(0.0, 0.0), block_input=[(0.0, 10.0)] * 4
    )


def test_sharding_divides_model_states():
    config = preset_config("t", num_labels=10)
    ddp = plan_memory(config, 64, 1, "bf16", "ddp", num_devices=8, profile=_flat_profile())
    fsdp = plan_memory(config, 64, 1, "bf16", "fsdp", num_devices=8, profile=_flat_profile())
    zero1 = plan_memory(config, 64, 1, "bf16", "zero1", num_devices=8, profile=_flat_profile())
    zero3 = plan_memory(config, 64, 1, "bf16", "zero3", num_devices=8, profile=_flat_profile())
    params = ddp.parameters
    assert ddp.weights == 4 * params and ddp.optimizer_states == 8 * params
    assert ddp.gradients == 8 * params  # fp32 gradients plus DDP's bucket copy
    assert fsdp.optimizer_states == pytest.approx(8 * params / 8)
    assert zero1.weights == 2 * params and zero1.optimizer_states == pytest.approx(16 * params / 8)
    assert zero3.weights == pytest.approx(2 * params / 8)
    assert fsdp.peak < zero1.peak < ddp.peak


def test_checkpointing_keeps_block_inputs_only():
    config = preset_config("t", num_labels=10)
    plain = plan_memory(config, 224, 4, "fp32", "ddp", False, profile=_flat_profile())
    checkpointed = plan_memory(config, 224, 4, "fp32", "ddp", True, profile=_flat_profile())
    blocks = sum(config.depths)
    assert plain.activations == pytest.approx(blocks * 100 * 224 * 224 * 4)
    assert checkpointed.activations == pytest.approx(blocks * 10 * 224 * 224 * 4)


def test_unknown_choices_are_named():
    config = preset_config("t")
    with pytest.raises(ValueError, match="sharding='zero4'"):
        plan_memory(config, 64, 1, sharding="zero4", profile=_flat_profile())
    with pytest.raises(ValueError, match="precision='fp8'"):
        plan_memory(config, 64, 1, precision="fp8", profile=_flat_profile())


def test_cuda_autocast_policy_keeps_norms_and_softmax_in_float32():
    # CUDA autocast saves LayerNorm/softmax outputs in float32: more bytes than CPU autocast, fewer than fp32.
    config = preset_config("tiny")
    fp32 = measure_activation_profile(config, "fp32")
    cpu = measure_activation_profile(config, "bf16", autocast_policy="cpu")
    cuda = measure_activation_profile(config, "bf16", autocast_policy="cuda")
    for stage in range(len(config.depths)):
        pixels = 224 * 224
        assert cpu.block_bytes(stage, pixels) < cuda.block_bytes(stage, pixels) < fp32.block_bytes(stage, pixels)


def test_deepspeed_plans_use_sixteen_bit_activations():
    # DeepSpeed casts the whole model to 16 bits, DDP runs torch autocast (norm outputs stay float32).
    config = preset_config("tiny")
    deepspeed = plan_memory(config, 128, 2, "bf16", "zero1", num_devices=2)
    ddp = plan_memory(config, 128, 2, "bf16", "ddp", num_devices=2)
    assert deepspeed.activations < ddp.activations

"""The kernel's multi-scale deformable attention (MSDA) op on the CPU against Transformers' PyTorch version, its
argument checks, its `MultiScaleDeformableAttention` layer and `kernelize` on models that hold Transformers' module."""

from __future__ import annotations

import logging
import types

import pytest
import torch
from msda_test_inputs import MSDA_CASES, level_tables, make_msda_inputs, reference_msda, reference_with_grads
from transformers import DeformableDetrConfig, ResNetConfig
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrMultiscaleDeformableAttention

from internimage_hf import DinoDetrConfig, DinoDetrForObjectDetection, hub_kernels
from internimage_hf.hub_kernels import kernelizing

# Half-precision forward tolerance (relative and absolute, against float64 on the same rounded inputs): the op
# accumulates in float32 and rounds once, so the error is about one rounding of the output.
HALF_TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("case", sorted(MSDA_CASES))
def test_forward_matches_transformers_float32(dcnv3_kernel, case):
    inputs = make_msda_inputs(case, torch.float32)
    out = dcnv3_kernel.multi_scale_deformable_attention(*inputs)
    expected = reference_msda(*inputs)
    assert out.shape == expected.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_samples_in_the_padding_and_far_outside(dcnv3_kernel):
    """Locations across each level's border read grid_sample's zero padding; far outside they contribute nothing."""
    value, shapes, starts, locations, weights = make_msda_inputs("odd_levels", torch.float64, spread=1.5)
    border = locations.clone()
    border[..., 0] = -0.5 / 9 + 1e-3  # just inside the left padding strip of level 0 (half a pixel wide)
    for locs in (locations, border):
        torch.testing.assert_close(
            dcnv3_kernel.multi_scale_deformable_attention(value, shapes, starts, locs, weights),
            reference_msda(value, shapes, starts, locs, weights),
            atol=1e-12,
            rtol=0,
        )
    far = torch.full_like(locations, 5.0)
    assert (dcnv3_kernel.multi_scale_deformable_attention(value, shapes, starts, far, weights) == 0).all()


def test_gradcheck_float64(dcnv3_kernel):
    value, shapes, starts, locations, weights = make_msda_inputs("odd_levels", torch.float64)
    value, locations, weights = value[:, :, :2, :3], locations[:, :5, :2], weights[:, :5, :2]  # fewer numeric grads
    leaves = [t.contiguous().requires_grad_() for t in (value, locations, weights)]

    def op(v, loc, w):
        return dcnv3_kernel.multi_scale_deformable_attention(v, shapes, starts, loc, w)

    assert torch.autograd.gradcheck(op, leaves, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", sorted(MSDA_CASES))
def test_gradients_match_transformers(dcnv3_kernel, case):
    value, shapes, starts, locations, weights = make_msda_inputs(case, torch.float64)
    grad = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3], dtype=torch.float64)
    _, expected = reference_with_grads(grad, value, shapes, starts, locations, weights)
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    dcnv3_kernel.multi_scale_deformable_attention(leaves[0], shapes, starts, leaves[1], leaves[2]).backward(grad)
    for leaf, want, name in zip(leaves, expected, ("value", "sampling_locations", "attention_weights"), strict=True):
        torch.testing.assert_close(leaf.grad, want, atol=1e-10, rtol=1e-10, msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision(dcnv3_kernel, dtype):
    value, shapes, starts, locations, weights = make_msda_inputs("detr_heads", dtype)
    out = dcnv3_kernel.multi_scale_deformable_attention(value, shapes, starts, locations, weights)
    assert out.dtype == dtype
    tol = HALF_TOLERANCE[dtype]
    grad = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    expected, expected_grads = reference_with_grads(grad, value, shapes, starts, locations, weights)
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    dcnv3_kernel.multi_scale_deformable_attention(leaves[0], shapes, starts, leaves[1], leaves[2]).backward(grad)
    for leaf, want, name in zip(leaves, expected_grads, ("value", "sampling_locations", "weights"), strict=True):
        assert leaf.grad.dtype == dtype, name
        # Gradients are sums of many products rounded once to `dtype`: compare on the scale of the largest one.
        scale = want.abs().max().item()
        torch.testing.assert_close(leaf.grad.double(), want, atol=2 * tol * scale, rtol=tol, msg=name)


def test_dtypes_of_locations_and_weights_follow_value(dcnv3_kernel):
    value, shapes, starts, locations, weights = make_msda_inputs("odd_levels", torch.float32)
    out = dcnv3_kernel.multi_scale_deformable_attention(value, shapes.int(), starts.int(), locations.double(), weights)
    torch.testing.assert_close(out, reference_msda(value, shapes, starts, locations, weights), atol=1e-5, rtol=1e-5)


def _bad_inputs():
    """(id, mutation of the op's five arguments, message) for every kind of argument error."""
    wrong_start = torch.tensor([0, 62, 82, 85])  # level 1 starts at 63
    cases = {
        "value_rank": (lambda a: (a[0][0], *a[1:]), r"`value` must be a 4-D \(N, S, M, D\) tensor, got 3-D"),
        "value_dtype": (lambda a: (a[0].int(), *a[1:]), r"`value` must be float32, float64, float16 or bfloat16"),
        "locations_rank": (
            lambda a: (*a[:3], a[3][..., 0], a[4]),
            r"`sampling_locations` must be a 6-D \(N, Q, M, L, P, 2\) tensor, got 5-D",
        ),
        "weights_rank": (lambda a: (*a[:4], a[4][0]), r"`attention_weights` must be a 5-D"),
        "locations_dtype": (lambda a: (*a[:3], a[3].double(), a[4]), r"`sampling_locations` has dtype Double but"),
        "weights_dtype": (lambda a: (*a[:4], a[4].half()), r"`attention_weights` has dtype Half but `value`"),
        "shapes_dtype": (lambda a: (a[0], a[1].int(), *a[2:]), r"`spatial_shapes` must be int64, got Int"),
        "starts_rank": (lambda a: (a[0], a[1], a[2][None], *a[3:]), r"`level_start_index` must be a 1-D"),
        "starts_inconsistent": (
            lambda a: (a[0], a[1], wrong_start, *a[3:]),
            r"`level_start_index`\[1\] is 62 but the levels before it in `spatial_shapes` hold 63 positions",
        ),
        "starts_length": (lambda a: (a[0], a[1], a[2][:3], *a[3:]), r"`level_start_index` has 3 entries but"),
        "shapes_total": (
            lambda a: (a[0][:, :-1], *a[1:]),
            r"`spatial_shapes` describe 87 positions but `value` has 86",
        ),
        "shapes_nonpositive": (
            lambda a: (a[0], torch.tensor([[7, 9], [4, 5], [3, 1], [0, 1]]), *a[2:]),
            r"`spatial_shapes` level 3 has size 0x1",
        ),
        "locations_levels": (lambda a: (*a[:3], a[3][:, :, :, :3], a[4]), r"`sampling_locations` has shape"),
        "weights_shape": (
            lambda a: (*a[:4], a[4][..., :2]),
            r"`attention_weights` has shape .* as `sampling_locations`",
        ),
    }
    return cases


@pytest.mark.parametrize("case", sorted(_bad_inputs()))
def test_bad_inputs_raise_naming_the_argument(dcnv3_kernel, case):
    mutate, message = _bad_inputs()[case]
    args = mutate(make_msda_inputs("odd_levels", torch.float32))
    with pytest.raises(RuntimeError, match=message):
        dcnv3_kernel._ops.ops.msda_forward(*args)


def test_bad_grad_output_raises(dcnv3_kernel):
    args = make_msda_inputs("odd_levels", torch.float32)
    with pytest.raises(RuntimeError, match=r"`grad_output` has shape \[2, 13, 17\] but the output shape is"):
        dcnv3_kernel._ops.ops.msda_backward(torch.zeros(2, 13, 17), *args)


def test_device_mix_raises(dcnv3_kernel):
    value, shapes, starts, locations, weights = make_msda_inputs("odd_levels", torch.float32)
    # No second real device here: a meta tensor beside CPU ones goes through the fake implementation's check.
    with pytest.raises(RuntimeError, match="`sampling_locations` is torch.float32 on meta but `value` is"):
        dcnv3_kernel._ops.ops.msda_forward(value, shapes, starts, locations.to("meta"), weights)


def test_opcheck(dcnv3_kernel):
    value, shapes, starts, locations, weights = make_msda_inputs("odd_levels", torch.float32)
    args = (value.requires_grad_(), shapes, starts, locations.requires_grad_(), weights.requires_grad_())
    torch.library.opcheck(dcnv3_kernel._ops.ops.msda_forward.default, args)
    grad = torch.randn(2, 13, 18)
    backward_args = (grad, value.detach(), shapes, starts, locations.detach(), weights.detach())
    torch.library.opcheck(dcnv3_kernel._ops.ops.msda_backward.default, backward_args)


# ------------------------------------------------------------------------------------- the layer and kernelize


def tiny_attention() -> DeformableDetrMultiscaleDeformableAttention:
    """Transformers' Deformable DETR attention (projections + the tagged MultiScaleDeformableAttention core)."""
    torch.manual_seed(0)
    # An explicit backbone: Transformers 5.4 would otherwise look up "resnet50" on the hub.
    backbone = ResNetConfig(out_features=["stage2"])
    config = DeformableDetrConfig(
        d_model=32,
        num_feature_levels=3,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
    )
    module = DeformableDetrMultiscaleDeformableAttention(config, num_heads=4, n_points=3)
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    return module


def attention_inputs(batch: int = 2, queries: int = 7):
    shapes, starts = level_tables([(6, 5), (3, 3), (2, 1)])
    torch.manual_seed(1)
    return {
        "hidden_states": torch.randn(batch, queries, 32),
        "encoder_hidden_states": torch.randn(batch, 41, 32),
        "reference_points": torch.rand(batch, queries, 3, 2),
        "spatial_shapes": shapes,
        "spatial_shapes_list": [(6, 5), (3, 3), (2, 1)],
        "level_start_index": starts,
    }


def test_layer_replaces_the_transformers_forward(dcnv3_kernel):
    """The kernel layer's forward bound to Transformers' module, as `kernels.kernelize` binds it."""
    reference, module = tiny_attention(), tiny_attention()
    module.attn.forward = types.MethodType(dcnv3_kernel.layers.MultiScaleDeformableAttention.forward, module.attn)
    inputs = attention_inputs()
    expected, _ = reference(**inputs)
    out, _ = module(**inputs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, got), (_, want) in zip(module.named_parameters(), reference.named_parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_kernelize_serves_a_transformers_deformable_attention(cpu_kernel_build, clean_env, kernels_module, caplog):
    """A model holding only Transformers' deformable attention (no InternImage layer) is kernelized too."""
    model = torch.nn.ModuleList([tiny_attention()]).eval()
    inputs = attention_inputs()
    with torch.no_grad():
        expected, _ = model[0](**inputs)
        with caplog.at_level(logging.WARNING):
            hub_kernels.kernelize(model, local_path=cpu_kernel_build.variant_dir)
        out, _ = model[0](**inputs)
    assert kernelizing._runs_kernel(model[0].attn)
    assert not caplog.records
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


TINY_BACKBONE = {
    "model_type": "internimage",
    "channels": 16,
    "depths": [1, 1, 1, 1],
    "groups": [1, 2, 4, 8],
    "out_features": ["stage2", "stage3", "stage4"],
}

LABELS = [
    {"class_labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]])},
    {"class_labels": torch.tensor([4]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])},
]


def tiny_dino() -> DinoDetrForObjectDetection:
    """A small DINO detector, its weights moved off the official initialisation: that puts sampling points (of the
    deformable attention and of DCNv3) exactly on pixel centres, where bilinear sampling has a kink and the
    location gradient depends on which side float rounding lands (both sides are valid subgradients)."""
    torch.manual_seed(0)
    config = DinoDetrConfig(
        backbone_config=TINY_BACKBONE, d_model=32, neck_norm_groups=8, num_queries=20, encoder_layers=2,
        decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_labels=5, num_denoising=6,
    )  # fmt: skip
    model = DinoDetrForObjectDetection(config)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model


def _training_step(model, pixel_values):
    torch.manual_seed(2)  # the same denoising noise for both models
    outputs = model(pixel_values, labels=LABELS)
    outputs.loss.backward()
    return outputs.loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def test_dino_training_backward_through_the_kernel(cpu_kernel_build, clean_env, kernels_module):
    """A DINO training step with the deformable attention (and DCNv3) on the kernel: same loss and gradients."""
    reference, model = tiny_dino().train(), tiny_dino().train()
    hub_kernels.kernelize(model, local_path=cpu_kernel_build.variant_dir, mode="training")
    attention = [m for m in model.modules() if type(m).__name__ == hub_kernels.MSDA_LAYER_NAME]
    assert attention and all(kernelizing._runs_kernel(m) for m in attention)
    pixel_values = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    expected_loss, expected_grads = _training_step(reference, pixel_values)
    loss, grads = _training_step(model, pixel_values)
    torch.testing.assert_close(loss, expected_loss, atol=1e-4, rtol=1e-4)
    assert grads.keys() == expected_grads.keys()
    for name in (
        "model.encoder.layers.0.self_attn.sampling_offsets.weight",
        "model.encoder.layers.0.self_attn.value_proj.weight",
    ):
        assert name in grads and grads[name].abs().sum() > 0, name
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-4, rtol=1e-3, msg=name)

"""Every build of the DCNv3 / DCNv4 CPU loops (baseline, AVX2, AVX-512) against the portable cores.

The kernel picks the widest build the CPU supports; INTERNIMAGE_KERNEL_CPU_ISA caps it (read at every call), so that
one machine tests the narrower builds too. Builds the CPU lacks are skipped.
"""

from __future__ import annotations

import pytest
import torch
from dcnv3_test_inputs import dcnv3_params, make_inputs
from dcnv4_test_inputs import dcnv4_params, make_dcnv4_inputs

from internimage_hf.ops.dcnv3 import dcnv3_core, softmax_over_points
from internimage_hf.ops.dcnv4 import dcnv4_core

ISA_ENV = "INTERNIMAGE_KERNEL_CPU_ISA"
# torch's own dispatch capability needs the same AVX-512 subsets (F, BW, DQ, VL) as the kernel's AVX-512 build.
SUPPORTED = {"DEFAULT": {"baseline"}, "AVX2": {"baseline", "avx2"}, "AVX512": {"baseline", "avx2", "avx512"}}
ISAS = ["baseline", "avx2", "avx512"]

# Group widths: 16 (one AVX-512 register, two AVX2 ones per corner), 8 (half a block), 5 (the scalar loops).
CASES = {
    "group_channels16": dict(group=4, group_channels=16),
    "group_channels8": dict(group=3, group_channels=8, remove_center=True),
    "group_channels5": dict(group=2, group_channels=5, stride=2, pad=0),
}


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    """Runs the test with the kernel capped at this build (skipped where the CPU cannot run it)."""
    if request.param not in SUPPORTED.get(torch.backends.cpu.get_cpu_capability(), {"baseline"}):
        pytest.skip(f"this CPU cannot run the {request.param} build")
    monkeypatch.setenv(ISA_ENV, request.param)
    return request.param


def check_forward_and_backward(kernel_fn, core_fn, tensors, params):
    """The float32 kernel against the float64 core: outputs within 1e-5, gradients within 2e-4."""
    grads, outs = [], []
    for fn, dtype in ((kernel_fn, torch.float32), (core_fn, torch.float64)):
        leaves = [t.to(dtype, copy=True).requires_grad_() for t in tensors]
        out = fn(*leaves, **params)
        out.backward(torch.cos(torch.arange(out.numel(), dtype=dtype)).reshape(out.shape))
        outs.append(out.detach().double())
        grads.append([leaf.grad.double() for leaf in leaves])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_dcnv4_every_build_matches_the_core(dcnv3_kernel, isa, name):
    params = dcnv4_params(**CASES[name])
    # offsets up to 3 px: samples inside, across the border and outside the 9x8 image
    value, offset_mask = make_dcnv4_inputs(params, batch=2, height=9, width=8, dtype=torch.float64, offset_range=3.0)
    check_forward_and_backward(dcnv3_kernel.dcnv4, dcnv4_core, (value, offset_mask), params)


@pytest.mark.parametrize("name", sorted(CASES))
def test_dcnv3_every_build_matches_the_core(dcnv3_kernel, isa, name):
    params = dcnv3_params(**CASES[name])
    value, offset, mask = make_inputs(params, batch=2, height=9, width=8, dtype=torch.float64, offset_range=3.0)
    check_forward_and_backward(dcnv3_kernel.dcnv3, dcnv3_core, (value, offset, mask), params)

    def core_softmax(value, offset, logits, **p):
        return dcnv3_core(value, offset, softmax_over_points(logits, p["group"]), **p)

    check_forward_and_backward(dcnv3_kernel.dcnv3_softmax, core_softmax, (value, offset, mask), params)


def test_every_build_propagates_non_finite_inputs_like_the_core(dcnv3_kernel, isa):
    """A NaN value, a NaN offset and an infinite weight of a sample outside give NaN exactly where the core does."""
    params = dcnv4_params(group=2, group_channels=16)
    value, offset_mask = make_dcnv4_inputs(params, batch=1, height=8, width=8, offset_range=1.0)
    value[0, 4, 3, :16] = float("nan")  # an interior pixel, group 0
    offset_mask[0, 2, 5, 27] = float("nan")  # group 1's first dx at pixel (2, 5)
    offset_mask[0, 6, 1, 27 + 2] = 100.0  # group 1's second point at pixel (6, 1) far outside ...
    offset_mask[0, 6, 1, 27 + 19] = float("inf")  # ... with an infinite weight
    out = dcnv3_kernel.dcnv4(value, offset_mask, **params)
    expected = dcnv4_core(value, offset_mask, **params)
    assert expected[..., :16].isnan().any() and expected[0, 2, 5, 16:].isnan().all()
    assert expected[0, 6, 1, 16:].isnan().all()
    assert torch.equal(out.isnan(), expected.isnan())
    torch.testing.assert_close(out.nan_to_num(), expected.nan_to_num(), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# the border: a sample's four corners are addressed as one 2x2 quad moved inside the image (H, W >= 2)
# --------------------------------------------------------------------------------------------------

SIZES = [(1, 1), (1, 5), (5, 1), (2, 2), (2, 6), (6, 2), (5, 7)]


def border_locations(size: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """`count` coordinates along an axis of `size` pixels, most of them where a corner is clamped: in (-1, 0) (the
    quad starts one pixel right of / below the sample's floor), on and past the last pixel, a few inside and outside."""
    edges = torch.tensor([-0.999, -0.7, -0.2, 0.0, 0.3, size - 1.5, size - 1.0, size - 0.6, size - 0.001, -1.5, size])
    picks = edges[torch.randint(len(edges), (count,), generator=gen)]
    inside = torch.rand(count, generator=gen, dtype=torch.float64) * (size + 1) - 1
    return torch.where(torch.rand(count, generator=gen) < 0.8, picks.double(), inside)


def one_tap_offsets(batch: int, height: int, width: int, group: int, seed: int) -> torch.Tensor:
    """(N, H, W, G, 2) offsets of a 1x1 kernel (stride 1, no padding) that put each sample at a border location."""
    gen = torch.Generator().manual_seed(seed)
    count = batch * height * width * group
    xs = border_locations(width, count, gen).reshape(batch, height, width, group)
    ys = border_locations(height, count, gen).reshape(batch, height, width, group)
    grid_y, grid_x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([xs - grid_x[None, :, :, None], ys - grid_y[None, :, :, None]], dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("group_channels", [16, 8, 5])
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_dcnv4_clamped_corners_at_every_edge_match_the_core(dcnv3_kernel, isa, height, width, group_channels, dtype):
    params = dcnv4_params(group=2, group_channels=group_channels, kernel=1)
    value, offset_mask = make_dcnv4_inputs(params, batch=2, height=height, width=width, dtype=torch.float64)
    offset_mask[..., :6] = torch.cat(  # fused row per group: dx, dy, weight (P = 1)
        [
            one_tap_offsets(2, height, width, 2, seed=height * 10 + width),
            offset_mask[..., :6].unflatten(-1, (2, 3))[..., 2:],
        ],
        dim=-1,
    ).flatten(-2)
    out = dcnv3_kernel.dcnv4(value.to(dtype), offset_mask.to(dtype), **params)
    torch.testing.assert_close(out.double(), dcnv4_core(value, offset_mask, **params), atol=1e-5, rtol=0)
    # 3x3 taps up to 3 px off: every corner case at once, through the official 16-channel blocks as well
    params = dcnv4_params(group=2, group_channels=group_channels)
    value, offset_mask = make_dcnv4_inputs(params, batch=2, height=height, width=width, offset_range=3.0)
    out = dcnv3_kernel.dcnv4(value.to(dtype), offset_mask.to(dtype), **params)
    torch.testing.assert_close(
        out.double(), dcnv4_core(value.double(), offset_mask.double(), **params), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("group_channels", [16, 5])
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_dcnv3_clamped_corners_at_every_edge_match_the_core(dcnv3_kernel, isa, height, width, group_channels):
    params = dcnv3_params(group=2, group_channels=group_channels, kernel=1)
    value, _, mask = make_inputs(params, batch=2, height=height, width=width, dtype=torch.float64)
    offset = one_tap_offsets(2, height, width, 2, seed=height * 10 + width).flatten(-2)
    out = dcnv3_kernel.dcnv3(value.float(), offset.float(), mask.float(), **params)
    torch.testing.assert_close(out.double(), dcnv3_core(value, offset, mask, **params), atol=1e-5, rtol=0)
    params = dcnv3_params(group=2, group_channels=group_channels)
    value, offset, mask = make_inputs(params, batch=2, height=height, width=width, offset_range=3.0)
    out = dcnv3_kernel.dcnv3(value, offset, mask, **params)
    torch.testing.assert_close(out.double(), dcnv3_core(value.double(), offset.double(), mask.double(), **params),
                               atol=1e-5, rtol=0)  # fmt: skip


@pytest.mark.parametrize("op", ["dcnv3", "dcnv4"])
def test_non_finite_values_next_to_the_border_keep_the_clamped_corners(dcnv3_kernel, isa, op):
    """With an inf or NaN in the two outermost rows or columns the forward keeps four separately clamped corners, as
    before the 2x2 quads: a sample at x = -0.5 reads column 0 for both its corners (the one outside with weight 0),
    so a NaN in column 1 stays out of it (as in the core), and an inf in column 0 gives inf * w + inf * 0 = NaN there
    (the core, which skips the corner outside, gives inf)."""
    params = dcnv4_params(group=1, group_channels=16, kernel=1)
    value, offset_mask = make_dcnv4_inputs(params, batch=1, height=5, width=6)
    # every sample a quarter pixel right of and below its own pixel (no corner of weight 0 inside the image) ...
    offset_mask[..., :2] = 0.25
    offset_mask[..., 2] = 1.0
    offset_mask[0, 3, 0, 0] = -0.5  # ... but pixels (3, 0) and (1, 0): at x = -0.5, half on column 0
    offset_mask[0, 1, 0, 0] = -0.5
    value[0, 3, 1] = float("nan")  # read by pixels (2, 0), (2, 1), (3, 1)
    value[0, 1, 0] = float("inf")  # pixel (1, 0) adds inf * w + inf * 0 (the corner outside, clamped onto column 0)
    if op == "dcnv4":
        out = dcnv3_kernel.dcnv4(value, offset_mask, **params)
        expected = dcnv4_core(value, offset_mask, **params)
    else:
        offset, mask = offset_mask[..., :2].contiguous(), offset_mask[..., 2:3].contiguous()
        out = dcnv3_kernel.dcnv3(value, offset, mask, **params)
        expected = dcnv3_core(value, offset, mask, **params)
    assert expected[0, 3, 1].isnan().all() and expected[0, 3, 0].isfinite().all()
    assert expected[0, 1, 0].isinf().all() and expected[0, 0, 0].isinf().all()
    assert out[0, 1, 0].isnan().all()  # the kernel's one difference: 0 * inf
    expected[0, 1, 0] = float("nan")
    assert torch.equal(out.isnan(), expected.isnan())
    torch.testing.assert_close(out.nan_to_num(), expected.nan_to_num(), atol=1e-5, rtol=0)

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

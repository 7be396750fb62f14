"""Compact parity fixtures of FlashInternImage: tiny models of every official style, run through the official code.

The files have the layout of InternImage's fixtures (`parity_fixtures`): official-named weights under `state_dict.`
(the large ones as grid recipes), the `input`, the official `logits` and NHWC `stage_outputs.{0..3}`, DCNv4 core
calls `op_cases.{j}.{input,offset_mask,output}`, and JSON metadata under `"golden"`, which also records the
`op_backend` that computed every DCNv4 sampling.

`OfficialFlashCode` runs the official, unchanged `classification/models/flash_intern_image.py` with the official
`DCNv4_op/DCNv4` package (`modules/dcnv4.py`, `functions/dcnv4_func.py`) of an OpenGVLab/DCNv4 checkout on CPU.
The package's compiled extension `DCNv4.ext` is replaced by a stand-in whose `dcnv4_forward` takes the official
argument list and runs

- ``official``: `dcnv4_official.official_dcnv4_forward` (the unchanged official CUDA source under the project's CUDA
  emulator), when `tools/dcnv4_official.py` is importable; the fixtures committed to the repository are made so;
- ``portable-fallback``: otherwise `internimage_hf.ops.dcnv4.dcnv4_core`, logged as a warning. Such fixtures only
  check everything around the sampling (projections, layout, norms, heads) against the official model code.

`timm` (imported by the official model for `trunc_normal_` and `DropPath`) is stubbed when it is not installed:
the fixtures overwrite every weight and run in eval mode, where neither matters.

Regenerate (writes tests/fixtures/flash_tiny_*.safetensors):

    python scripts/make_parity_fixtures.py --family flash_internimage --official /path/to/DCNv4
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.machinery
import importlib.util
import io
import logging
import subprocess
import sys
import types
from pathlib import Path

import torch
from parity_fixtures import (
    FIXTURE_FORMAT,
    MODEL_ATOL,
    OP_ATOL,
    STORED_MAX_ELEMENTS,
    compare_with_official,
    grid_tensor,
    randomise_weights,
    write_fixtures,
)
from torch import nn

logger = logging.getLogger(__name__)

OFFICIAL_BACKEND = "official"
FALLBACK_BACKEND = "portable-fallback"

# Stage widths 32..256 with these groups give 16, 32, 32 and 64 channels per group: the official DCNv4 needs
# multiples of 16.
_COMMON = {
    "core_op": "DCNv4",
    "num_classes": 10,
    "channels": 32,
    "depths": [1, 1, 1, 1],
    "groups": [2, 2, 4, 4],
    "layer_scale": None,
    "offset_scale": 1.0,
    "post_norm": False,
    "mlp_ratio": 4.0,
    "with_cp": False,
    "drop_path_rate": 0.1,
    "mlp_fc2_bias": False,
    "dcn_output_bias": False,
    "dw_kernel_size": None,
    "res_post_norm": False,
    "use_clip_projector": False,
    "level2_post_norm": False,
    "level2_post_norm_block_ids": None,
    "center_feature_scale": False,
}
_S = {"layer_scale": 1e-5, "post_norm": True, "dw_kernel_size": 3, "drop_path_rate": 0.4}
_LEVEL2 = {"depths": [1, 1, 2, 1], "level2_post_norm": True, "level2_post_norm_block_ids": [1], "dw_kernel_size": 3}

# Official constructor kwargs of each fixture: T, S, B (offset_scale 0.5), L (biases, offset_scale 2), and the
# H/G-style options the official FlashInternImage accepts (residual post-norms, stage-3 post-norms, the stage norm
# kept by center_feature_scale under post_norm). Its CLIP-projector head is not covered: the official
# `forward_clip_projector` permutes the already channels-first stage outputs a second time and fails.
STYLES: dict[str, dict] = {
    "flash_tiny_t": {**_COMMON},
    "flash_tiny_s": {**_COMMON, **_S},
    "flash_tiny_b": {**_COMMON, **_S, "offset_scale": 0.5},
    "flash_tiny_l": {**_COMMON, **_S, "offset_scale": 2.0, "dcn_output_bias": True, "mlp_fc2_bias": True},
    "flash_tiny_h": {**_COMMON, **_LEVEL2, "res_post_norm": True, "center_feature_scale": True},
    "flash_tiny_g": {**_COMMON, **_LEVEL2, "post_norm": True, "center_feature_scale": True, "mlp_fc2_bias": True},
}
SEEDS = {"flash_tiny_t": 41, "flash_tiny_s": 42, "flash_tiny_b": 43, "flash_tiny_l": 44, "flash_tiny_h": 45,
         "flash_tiny_g": 46}  # fmt: skip

# One image (non-square; H/G-style heads need multiples of 32). The official DCNv4 kernel mixes images up when the
# query multiplier its `findspec` picks from B*H*W does not divide one image's H*W: such a block's later queries are
# sampled from the previous image at rows below its bottom edge (here: stage 2 of a batch of two, multiplier 64 for
# 32 queries an image). The official outputs of a batch are therefore wrong for some shapes, on a GPU as here; one
# image is always launched correctly. tests/kernel/test_dcnv4_official_parity.py shows the effect.
INPUT_SHAPE = (1, 3, 64, 32)

# The official `ext.dcnv4_forward` arguments after `input` and `offset_mask`, in order.
OFFICIAL_OP_ARGUMENTS = (
    "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w", "group",
    "group_channels", "offset_scale", "im2col_step", "remove_center", "d_stride", "block_thread", "softmax",
)  # fmt: skip


def _op(group=2, group_channels=16, offset_scale=1.0, remove_center=0, pad=1, dilation=1, launch=(None, None)):
    d_stride, block_thread = launch
    return {
        "kernel_h": 3,
        "kernel_w": 3,
        "stride_h": 1,
        "stride_w": 1,
        "pad_h": pad,
        "pad_w": pad,
        "dilation_h": dilation,
        "dilation_w": dilation,
        "group": group,
        "group_channels": group_channels,
        "offset_scale": offset_scale,
        "im2col_step": 256,
        "remove_center": remove_center,
        "d_stride": d_stride,
        "block_thread": block_thread,
        "softmax": False,
    }  # fmt: skip  (d_stride/block_thread None: the launch sizes the official `findspec` picks for the shape)


# DCNv4 core calls (the kernel only exists for 3x3 grids, with or without the centre) on small NHWC inputs, as
# (params, (batch, height, width)); the fused projection's width is rounded up to a multiple of 8 as the module does.
OP_CASES: list[tuple[dict, tuple[int, int, int]]] = [
    # Two images: a launch of 4 queries a block (16 threads), which divides each image's 20 queries (see INPUT_SHAPE).
    (_op(launch=(8, 16)), (2, 4, 5)),
    (_op(group=3, offset_scale=0.5, remove_center=1), (1, 5, 4)),
    (_op(group=1, group_channels=32, offset_scale=2.0, pad=2, dilation=2), (1, 6, 5)),
]


# ------------------------------------------------------------------------------------------ the official code


def select_op_backend():
    """(name, dcnv4_forward) of the DCNv4 sampling the stand-in extension runs (see the module docstring)."""
    try:
        official = importlib.import_module("dcnv4_official")
    except ImportError:
        logger.warning(
            "tools/dcnv4_official.py is not importable: the DCNv4 sampling runs internimage_hf's portable "
            "dcnv4_core (backend %r), so these fixtures do not check the sampling against the official kernel",
            FALLBACK_BACKEND,
        )
        return FALLBACK_BACKEND, _portable_dcnv4_forward
    return OFFICIAL_BACKEND, official.official_dcnv4_forward


def _portable_dcnv4_forward(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                            dilation_w, group, group_channels, offset_scale, im2col_step, remove_center, d_stride,
                            block_thread, softmax):  # fmt: skip
    """`ext.dcnv4_forward` (official argument list) computed by `internimage_hf.ops.dcnv4.dcnv4_core`."""
    from internimage_hf.ops.dcnv4 import dcnv4_core

    if softmax:
        raise NotImplementedError("the portable fallback has no in-kernel softmax (DCNv4Function never asks for it)")
    return dcnv4_core(
        input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
        group_channels, offset_scale, remove_center,
    )  # fmt: skip


def _extension_standin(dcnv4_forward) -> types.ModuleType:
    ext = types.ModuleType("DCNv4.ext")
    ext.dcnv4_forward = dcnv4_forward

    def unavailable(*args, **kwargs):
        raise NotImplementedError("the DCNv4.ext stand-in only runs the forward pass")

    ext.dcnv4_backward = ext.flash_deform_attn_forward = ext.flash_deform_attn_backward = unavailable
    return ext


FLASH_ATTENTION_MODULE = "DCNv4.functions.flash_deform_attn_func"


def _flash_attention_standin() -> types.ModuleType:
    module = types.ModuleType(FLASH_ATTENTION_MODULE)

    class FlashDeformAttnFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            raise NotImplementedError("stand-in: the flash deformable attention is not part of FlashInternImage")

    module.FlashDeformAttnFunction = FlashDeformAttnFunction
    return module


def _timm_standin() -> dict[str, types.ModuleType]:
    """`timm.models.layers` with the two names the official model imports (used only at initialisation/training)."""

    class DropPath(nn.Module):
        def __init__(self, drop_prob=0.0):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            if not self.training or self.drop_prob == 0.0:
                return x
            keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.drop_prob)
            return x * keep / (1 - self.drop_prob)

    layers = types.ModuleType("timm.models.layers")
    layers.trunc_normal_, layers.DropPath = nn.init.trunc_normal_, DropPath
    models = types.ModuleType("timm.models")
    models.layers = layers
    timm = types.ModuleType("timm")
    timm.models = models
    modules = {"timm": timm, "timm.models": models, "timm.models.layers": layers}
    for name, module in modules.items():  # libraries that probe for timm (`find_spec`) need a spec
        module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    return modules


class OfficialFlashCode:
    """The official FlashInternImage classification model and DCNv4 package of an OpenGVLab/DCNv4 checkout, on CPU.

    Args:
        checkout: the OpenGVLab/DCNv4 git checkout (its files are imported, never copied or changed).
    """

    op_case_parts = ("input", "offset_mask")  # the stored tensors of an op case, in `op_output`'s order

    def __init__(self, checkout: Path) -> None:
        self.checkout = Path(checkout).resolve()
        model_file = self.checkout / "classification" / "models" / "flash_intern_image.py"
        package = self.checkout / "DCNv4_op" / "DCNv4"
        if not model_file.is_file() or not (package / "modules" / "dcnv4.py").is_file():
            raise FileNotFoundError(f"--official: {model_file} or {package} missing; pass an OpenGVLab/DCNv4 checkout")
        self.op_backend, self.dcnv4_forward = select_op_backend()
        self.stubbed = self._install_standins()
        sys.path.insert(0, str(package.parent))
        spec = importlib.util.spec_from_file_location("official_flash_intern_image", model_file)
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)
        self.commit = self._commit()

    def _install_standins(self) -> list[str]:
        # `from DCNv4 import ext` inside the package finds the stand-in here before looking for a compiled module.
        sys.modules["DCNv4.ext"] = _extension_standin(self.dcnv4_forward)
        # The flash deformable attention (not part of FlashInternImage) reads the GPU's properties at import.
        sys.modules[FLASH_ATTENTION_MODULE] = _flash_attention_standin()
        stubbed = ["DCNv4.ext", FLASH_ATTENTION_MODULE]
        if importlib.util.find_spec("timm") is None:
            sys.modules.update(_timm_standin())
            stubbed.append("timm")
        return stubbed

    def _commit(self) -> str:
        """HEAD of the checkout, with "-dirty" when the files the fixtures run differ from it."""
        git = ["git", "-C", str(self.checkout)]
        paths = ["classification/models", "DCNv4_op/DCNv4"]
        try:
            commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout
            status = subprocess.run(
                [*git, "status", "--porcelain", "--", *paths], check=True, capture_output=True, text=True
            ).stdout
        except (OSError, subprocess.CalledProcessError) as error:
            raise RuntimeError(f"--official: {self.checkout} is not a git checkout (its commit is recorded)") from error
        return commit.strip() + ("-dirty" if status.strip() else "")

    def build(self, model_kwargs: dict, seed: int) -> nn.Module:
        """The official `FlashInternImage(**model_kwargs)` in eval mode (its constructor prints; that is silenced)."""
        torch.manual_seed(seed)
        with contextlib.redirect_stdout(io.StringIO()):
            return self.module.FlashInternImage(**model_kwargs).eval()

    @torch.no_grad()
    def outputs(self, model: nn.Module, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits and the four stage outputs before each downsample, stored NHWC as InternImage's fixtures."""
        tensors = {"logits": model(pixel_values)}
        for i, stage in enumerate(model.forward_features_seq_out(pixel_values)):  # official: NCHW
            tensors[f"stage_outputs.{i}"] = stage.permute(0, 2, 3, 1).contiguous()
        return tensors

    @torch.no_grad()
    def op_output(self, params: dict, value: torch.Tensor, offset_mask: torch.Tensor) -> torch.Tensor:
        return self.dcnv4_forward(value, offset_mask, *(params[name] for name in OFFICIAL_OP_ARGUMENTS))


# --------------------------------------------------------------------------------------------- the fixtures


def offset_mask_width(group: int, points: int) -> int:
    """The official fused projection's width: ``group * points * 3`` rounded up to a multiple of 8."""
    return -(-group * points * 3 // 8) * 8


def make_op_cases(official: OfficialFlashCode, seed: int) -> dict[str, torch.Tensor]:
    """`OP_CASES` on grid inputs: offsets within ±2 px, unnormalised point weights within ±2."""
    tensors = {}
    for j, (params, (batch, height, width)) in enumerate(OP_CASES):
        points = params["kernel_h"] * params["kernel_w"] - params["remove_center"]
        channels = params["group"] * params["group_channels"]
        base = seed * 1000 + 10 * j
        value = grid_tensor((batch, height, width, channels), base, 1)
        offset_mask = grid_tensor((batch, height, width, offset_mask_width(params["group"], points)), base + 1, 1)
        prefix = f"op_cases.{j}."
        tensors |= {prefix + "input": value, prefix + "offset_mask": offset_mask}
        tensors[prefix + "output"] = official.op_output(params, value, offset_mask).contiguous()
    return tensors


def make_fixture(official: OfficialFlashCode, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """One fixture: the official model of style `name` with grid weights, run on a grid input."""
    model_kwargs, seed = STYLES[name], SEEDS[name]
    model = official.build(model_kwargs, seed)
    recipes = randomise_weights(model, seed)
    pixel_values = grid_tensor(INPUT_SHAPE, seed * 100_000 - 1, 1)
    state_dict = model.state_dict()
    generated = {k: r for k, r in recipes.items() if state_dict[k].numel() > STORED_MAX_ELEMENTS}
    tensors = {f"state_dict.{k}": v.contiguous() for k, v in state_dict.items() if k not in generated}
    tensors |= {"input": pixel_values, **official.outputs(model, pixel_values), **make_op_cases(official, seed)}
    metadata = {
        "name": name,
        "family": "flash_internimage",
        "format": FIXTURE_FORMAT,
        "seed": seed,
        "input_shape": list(INPUT_SHAPE),
        "torch": torch.__version__,
        "official_commit": official.commit,
        "op_backend": official.op_backend,
        "stubbed_imports": official.stubbed,
        "model_kwargs": model_kwargs,
        "op_cases": [params for params, _ in OP_CASES],
        "generated": generated,
    }
    return tensors, metadata


def make_fixtures(official: OfficialFlashCode, out_dir: Path, names=tuple(STYLES)) -> list[Path]:
    return write_fixtures(out_dir, names, lambda name: make_fixture(official, name))


def official_parameter_counts(official: OfficialFlashCode, configs: dict[str, dict]) -> dict[str, int]:
    """Parameters of the official models built from `configs` (name -> constructor kwargs), on CPU (the official
    constructor reads its drop-path rates with `.item()`, which the meta device refuses)."""
    counts = {}
    for name, kwargs in configs.items():
        model = official.build(kwargs, 0)
        counts[name] = sum(p.numel() for p in model.parameters())
        del model
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the FlashInternImage parity fixtures (tests/fixtures/flash_tiny_*) with the official code."
    )
    parser.add_argument("--official", type=Path, required=True, help="an OpenGVLab/DCNv4 git checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"), help="output folder (tests/fixtures)")
    parser.add_argument("--only", nargs="+", choices=sorted(STYLES), help="write only these fixtures")
    parser.add_argument(
        "--check", nargs="+", type=Path, metavar="FILE",
        help="instead of writing, rerun the official code on these fixture files and print max abs diffs",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        official = OfficialFlashCode(args.official)
    except (FileNotFoundError, ModuleNotFoundError, RuntimeError) as error:
        parser.error(str(error))
    print(
        f"official commit {official.commit}; torch {torch.__version__}; DCNv4 op backend {official.op_backend}; "
        f"stubbed imports: {', '.join(official.stubbed)}"
    )
    if args.check:
        agree = True
        for path in args.check:
            diffs = compare_with_official(official, path)
            model = max(v for k, v in diffs.items() if not k.startswith("op_cases"))
            ops = max(v for k, v in diffs.items() if k.startswith("op_cases"))
            agree &= model <= MODEL_ATOL and ops <= OP_ATOL
            print(f"{path}: logits/stages max abs diff {model:.3g}, op cases {ops:.3g}")
        return 0 if agree else 1
    for path in make_fixtures(official, args.out, args.only or tuple(STYLES)):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


__all__ = [
    "FALLBACK_BACKEND",
    "OFFICIAL_BACKEND",
    "OP_CASES",
    "STYLES",
    "OfficialFlashCode",
    "compare_with_official",
    "make_fixtures",
    "official_parameter_counts",
]

"""Compact parity fixtures: tiny InternImage models of every official style, run through the official code.

`tests/fixtures/<name>.safetensors` lets the parity tests run in a fresh clone, where the full golden outputs
(`../shared/golden`, 50 MB) are absent. Each file has the layout of a golden file (see `tests/conftest.py`):
official-named weights under `state_dict.`, the `input`, the official `logits` and NHWC `stage_outputs.{0..3}`,
six DCNv3 core calls `op_cases.{j}.{input,offset,mask,output}`, and JSON metadata under `"golden"` (the official
constructor kwargs, the op parameters, the official commit, the torch version).

Every weight, input, offset and mask logit is drawn on a power-of-two grid (`grid_tensor`), so its float32 value
is the same on every platform and torch version. Weights of at most `STORED_MAX_ELEMENTS` elements are stored as
float32; the larger ones (mostly the H/G CLIP head, whose 4.2M parameters are fixed by the official code whatever
the model size) are stored as their recipe (seed, exponent, centre) with the SHA-256 of their bytes, and rebuilt by
`rebuild_weights`.

`make_fixtures` needs an OpenGVLab/InternImage checkout (never vendored here) and `timm`; it runs the official
`classification/models/intern_image.py` on CPU with its PyTorch DCNv3 core (`core_op="DCNv3_pytorch"`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

FIXTURE_FORMAT = 1
GRID_BITS = 12  # grid values are centre + k * 2**(exponent - GRID_BITS), k in [-2**GRID_BITS, 2**GRID_BITS)
STORED_MAX_ELEMENTS = 8192  # larger weights are stored as a recipe
INPUT_SHAPE = (2, 3, 64, 32)  # batch 2, non-square; H/G heads need multiples of 32
MODEL_ATOL, OP_ATOL = 1e-4, 1e-5  # the parity tolerances of the tests (logits and stage outputs; DCNv3 core)

_COMMON = {
    "core_op": "DCNv3_pytorch",
    "num_classes": 10,
    "channels": 8,
    "depths": [1, 1, 1, 1],
    "groups": [2, 2, 4, 4],
    "layer_scale": None,
    "offset_scale": 1.0,
    "post_norm": False,
    "mlp_ratio": 4.0,
    "with_cp": False,
    "drop_path_rate": 0.1,
    "res_post_norm": False,
    "dw_kernel_size": None,
    "use_clip_projector": False,
    "level2_post_norm": False,
    "level2_post_norm_block_ids": None,
    "center_feature_scale": False,
    "remove_center": False,
}
_HG_HEAD = {
    "depths": [1, 1, 2, 1],
    "dw_kernel_size": 5,
    "use_clip_projector": True,
    "level2_post_norm": True,
    "level2_post_norm_block_ids": [1],
    "center_feature_scale": True,
}

# Official constructor kwargs of each fixture: one per model style of the golden files (same names and options).
STYLES: dict[str, dict] = {
    "tiny_t": {**_COMMON},
    "tiny_s": {**_COMMON, "layer_scale": 1e-5, "post_norm": True, "drop_path_rate": 0.4},
    "tiny_l": {**_COMMON, "layer_scale": 1e-5, "post_norm": True, "offset_scale": 2.0},
    "tiny_h": {**_COMMON, **_HG_HEAD, "res_post_norm": True, "drop_path_rate": 0.2},
    "tiny_g": {**_COMMON, **_HG_HEAD, "post_norm": True, "drop_path_rate": 0.4},
    "tiny_rc": {**_COMMON, "dw_kernel_size": 5, "remove_center": True},
}
SEEDS = {"tiny_t": 21, "tiny_s": 22, "tiny_l": 23, "tiny_h": 24, "tiny_g": 25, "tiny_rc": 26}


# The scalar arguments of the official `dcnv3_core_pytorch`, in its order.
OFFICIAL_OP_ARGUMENTS = (
    "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w", "group",
    "group_channels", "offset_scale", "remove_center",
)  # fmt: skip


def _op(kernel=3, stride=1, pad=1, dilation=1, group=2, group_channels=4, offset_scale=1.0, remove_center=0):
    return {
        "kernel_h": kernel, "kernel_w": kernel, "stride_h": stride, "stride_w": stride, "pad_h": pad, "pad_w": pad,
        "dilation_h": dilation, "dilation_w": dilation, "group": group, "group_channels": group_channels,
        "offset_scale": offset_scale, "remove_center": remove_center,
    }  # fmt: skip


# DCNv3 core calls of the kinds the golden files hold (plain, offset_scale 2, remove_center with odd groups, stride
# 2, dilation 2, 5x5 with remove_center) on small NHWC inputs, as (params, (batch, height, width)).
OP_CASES: list[tuple[dict, tuple[int, int, int]]] = [
    (_op(group=4, group_channels=8), (2, 3, 4)),
    (_op(group=2, group_channels=8, offset_scale=2.0), (1, 5, 4)),
    (_op(group=3, group_channels=5, remove_center=1), (1, 4, 5)),
    (_op(stride=2), (1, 7, 6)),
    (_op(pad=2, dilation=2, offset_scale=1.5), (1, 6, 5)),
    (_op(kernel=5, pad=2, remove_center=1), (1, 5, 4)),
]


# ------------------------------------------------------------------------------------------------ exact values


def grid_tensor(shape, seed: int, exponent: int, center: float = 0.0) -> torch.Tensor:
    """Float32 tensor of `shape` with values `center + k * 2**(exponent - GRID_BITS)`, `k` uniform on the grid.

    Drawn with `torch.randint` from a generator seeded with `seed`; the values lie in
    `[center - 2**exponent, center + 2**exponent)` and are exact float32 numbers, so the same recipe gives the same
    bytes in every process (checked by a SHA-256 where it matters).
    """
    generator = torch.Generator().manual_seed(seed)
    steps = torch.randint(-(2**GRID_BITS), 2**GRID_BITS, tuple(shape), generator=generator)
    return steps.to(torch.float32) * 2.0 ** (exponent - GRID_BITS) + center


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's float32 bytes in C order."""
    return hashlib.sha256(tensor.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


def rebuild_weights(recipes: dict[str, dict]) -> dict[str, torch.Tensor]:
    """The weights a fixture stores as recipes (`metadata["generated"]`), checked against their SHA-256.

    Raises `RuntimeError` when a rebuilt tensor differs from the one the official model ran with (a torch whose
    `randint` draws differently): regenerate the fixtures then.
    """
    weights = {}
    for key, recipe in recipes.items():
        tensor = grid_tensor(recipe["shape"], recipe["seed"], recipe["exponent"], recipe["center"])
        if tensor_sha256(tensor) != recipe["sha256"]:
            raise RuntimeError(
                f"fixture weight {key!r} rebuilt from its recipe differs from the one the official model ran with "
                f"(torch {torch.__version__} draws `randint` differently?); regenerate with "
                "scripts/make_parity_fixtures.py"
            )
        weights[key] = tensor
    return weights


def _fan_in_exponent(shape) -> int:
    """Power-of-two half-width for a uniform init of unit gain: 2**e ~ sqrt(3 / fan_in)."""
    fan_in = math.prod(shape[1:])
    return round(math.log2(math.sqrt(3.0 / fan_in)))


def weight_recipe(module_name: str, module: nn.Module, param_name: str, shape) -> tuple[int, float]:
    """(exponent, centre) of a weight's grid, chosen so that every part of the network does real work.

    Official inits leave DCNv3 offsets, masks and centre-feature gates at zero (every sample at its grid point,
    uniform point weights) and layer scales at 1e-5; these recipes give fractional offsets of about ±1 px (up to
    about 3), clearly non-uniform point weights and gates, layer scales in [0.5, 1), norms away from the identity
    and non-trivial BatchNorm statistics. Other weights get a unit-gain uniform init, biases small non-zero values.
    """
    if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        return {"weight": (-2, 1.0), "bias": (-3, 0.0), "running_mean": (-3, 0.0), "running_var": (-1, 1.0)}[param_name]
    if param_name in ("gamma1", "gamma2"):
        return -2, 0.75
    is_bias = param_name.endswith("bias")  # also q_bias/k_bias/v_bias
    if module_name.endswith(".offset"):  # offsets of about ±1 px (before offset_scale)
        return (0, 0.0) if is_bias else (_fan_in_exponent(shape), 0.0)
    if module_name.endswith(".mask") or param_name.startswith("center_feature_scale_proj"):
        return (0, 0.0) if is_bias else (_fan_in_exponent(shape) + 1, 0.0)
    return (-3, 0.0) if is_bias else (_fan_in_exponent(shape), 0.0)


def randomise_weights(model: nn.Module, seed: int) -> dict[str, dict]:
    """Overwrite every float parameter and buffer of the official `model` with grid values; return the recipes."""
    recipes = {}
    modules = dict(model.named_modules())
    for index, (key, tensor) in enumerate(model.state_dict().items()):
        if not tensor.is_floating_point():
            continue  # BatchNorm's num_batches_tracked
        module_name, _, param_name = key.rpartition(".")
        exponent, center = weight_recipe(module_name, modules[module_name], param_name, tensor.shape)
        recipe = {"shape": list(tensor.shape), "seed": seed * 100_000 + index, "exponent": exponent, "center": center}
        value = grid_tensor(recipe["shape"], recipe["seed"], exponent, center)
        with torch.no_grad():
            tensor.copy_(value)
        recipes[key] = {**recipe, "sha256": tensor_sha256(value)}
    return recipes


# ------------------------------------------------------------------------------------------ the official code


class OfficialCode:
    """The official classification code of an OpenGVLab/InternImage checkout, imported for CPU use.

    Only imports that need a compiled op are stubbed, and only when it is not installed: the `DCNv3` CUDA
    extension module and `pkg_resources` (which the official `dcnv3_func.py` uses solely to read that extension's
    version). `DCNv3_pytorch` and `dcnv3_core_pytorch` never call it. `timm` must be installed.
    """

    op_case_parts = ("input", "offset", "mask")  # the stored tensors of an op case, in `op_output`'s order

    def __init__(self, checkout: Path) -> None:
        self.checkout = Path(checkout).resolve()
        classification = self.checkout / "classification"
        model_file = classification / "models" / "intern_image.py"
        if not model_file.is_file():
            raise FileNotFoundError(f"--official: {model_file} not found; pass an OpenGVLab/InternImage checkout")
        self.stubbed = self._stub_compiled_op()
        sys.path.insert(0, str(classification))
        spec = importlib.util.spec_from_file_location("official_intern_image", model_file)
        self.module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(self.module)
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(f"the official code needs {error.name!r}: pip install {error.name}") from error
        from ops_dcnv3.functions import dcnv3_core_pytorch

        self.dcnv3_core = dcnv3_core_pytorch
        self.commit = self._commit()

    @staticmethod
    def _stub_compiled_op() -> list[str]:
        if importlib.util.find_spec("DCNv3") is not None:
            return []
        sys.modules["DCNv3"] = types.ModuleType("DCNv3")
        version = types.SimpleNamespace(version="0")
        sys.modules["pkg_resources"] = types.SimpleNamespace(get_distribution=lambda name: version)
        return ["DCNv3", "pkg_resources"]

    def _commit(self) -> str:
        """HEAD of the checkout, with "-dirty" when files under classification/ differ from it."""
        git = ["git", "-C", str(self.checkout)]
        try:
            commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout
            status = subprocess.run(
                [*git, "status", "--porcelain", "--", "classification"], check=True, capture_output=True, text=True
            ).stdout
        except (OSError, subprocess.CalledProcessError) as error:
            raise RuntimeError(f"--official: {self.checkout} is not a git checkout (its commit is recorded)") from error
        return commit.strip() + ("-dirty" if status.strip() else "")

    def build(self, model_kwargs: dict, seed: int) -> nn.Module:
        """The official `InternImage(**model_kwargs)` in eval mode (its constructor prints; that is silenced)."""
        torch.manual_seed(seed)
        with contextlib.redirect_stdout(io.StringIO()):
            return self.module.InternImage(**model_kwargs).eval()

    @torch.no_grad()
    def outputs(self, model: nn.Module, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits and the four NHWC stage outputs before each downsample (what the official backbones emit)."""
        tensors = {"logits": model(pixel_values)}
        for i, stage in enumerate(model.forward_features_seq_out(pixel_values)):
            tensors[f"stage_outputs.{i}"] = stage.contiguous()
        return tensors

    @torch.no_grad()
    def op_output(self, params: dict, value, offset, mask) -> torch.Tensor:
        return self.dcnv3_core(value, offset, mask, *(params[name] for name in OFFICIAL_OP_ARGUMENTS))


# --------------------------------------------------------------------------------------------- the fixtures


def _op_output_size(size: int, params: dict, axis: str) -> int:
    span = params[f"dilation_{axis}"] * (params[f"kernel_{axis}"] - 1) + 1
    return (size + 2 * params[f"pad_{axis}"] - span) // params[f"stride_{axis}"] + 1


def make_op_cases(official: OfficialCode, seed: int) -> dict[str, torch.Tensor]:
    """`OP_CASES` on grid inputs (offsets within ±2 px, softmax-normalised point weights), official outputs."""
    tensors = {}
    for j, (params, (batch, height, width)) in enumerate(OP_CASES):
        points = params["kernel_h"] * params["kernel_w"] - params["remove_center"]
        group, channels = params["group"], params["group"] * params["group_channels"]
        out_h, out_w = _op_output_size(height, params, "h"), _op_output_size(width, params, "w")
        base = seed * 1000 + 10 * j
        value = grid_tensor((batch, height, width, channels), base, 1)
        offset = grid_tensor((batch, out_h, out_w, group * points * 2), base + 1, 1)
        logits = grid_tensor((batch, out_h, out_w, group, points), base + 2, 1)
        mask = logits.softmax(-1).reshape(batch, out_h, out_w, group * points)
        prefix = f"op_cases.{j}."
        tensors |= {prefix + "input": value, prefix + "offset": offset, prefix + "mask": mask}
        tensors[prefix + "output"] = official.op_output(params, value, offset, mask).contiguous()
    return tensors


def make_fixture(official: OfficialCode, name: str) -> tuple[dict[str, torch.Tensor], dict]:
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
        "format": FIXTURE_FORMAT,
        "seed": seed,
        "input_shape": list(INPUT_SHAPE),
        "torch": torch.__version__,
        "official_commit": official.commit,
        "stubbed_imports": official.stubbed,
        "model_kwargs": model_kwargs,
        "op_cases": [params for params, _ in OP_CASES],
        "generated": generated,
    }
    return tensors, metadata


def write_fixture(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    save_file(tensors, str(path), metadata={"golden": json.dumps(metadata)})


def read_fixture(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors (weights rebuilt from their recipes included, under `state_dict.`) and metadata of a fixture."""
    metadata = json.loads(safe_open(str(path), "pt").metadata()["golden"])
    tensors = load_file(str(path))
    tensors |= {f"state_dict.{k}": v for k, v in rebuild_weights(metadata.get("generated", {})).items()}
    return tensors, metadata


def write_fixtures(out_dir: Path, names, make_one) -> list[Path]:
    """Write `make_one(name)` -> (tensors, metadata) as `out_dir/<name>.safetensors` for every name; the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = out_dir / f"{name}.safetensors"
        write_fixture(path, *make_one(name))
        paths.append(path)
    return paths


def make_fixtures(official: OfficialCode, out_dir: Path, names=tuple(STYLES)) -> list[Path]:
    return write_fixtures(out_dir, names, lambda name: make_fixture(official, name))


def compare_with_official(official, path: Path) -> dict[str, float]:
    """Max abs difference between a golden/fixture file and the official code (an `OfficialCode` or any object with
    its `build`, `outputs`, `op_output` and `op_case_parts`) run on its weights and inputs."""
    tensors, metadata = read_fixture(path)
    model = official.build(metadata["model_kwargs"], metadata.get("seed", 0))
    prefix = "state_dict."
    model.load_state_dict({k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)})
    produced = official.outputs(model, tensors["input"])
    for j, params in enumerate(metadata["op_cases"]):
        case = [tensors[f"op_cases.{j}.{part}"] for part in official.op_case_parts]
        produced[f"op_cases.{j}.output"] = official.op_output(params, *case)
    return {key: (value - tensors[key]).abs().max().item() for key, value in produced.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the compact parity fixtures (tests/fixtures) by running the official InternImage code."
    )
    parser.add_argument("--official", type=Path, required=True, help="an OpenGVLab/InternImage git checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"), help="output folder (tests/fixtures)")
    parser.add_argument("--only", nargs="+", choices=sorted(STYLES), help="write only these fixtures")
    parser.add_argument(
        "--check",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="instead of writing, rerun the official code on these golden/fixture files and print max abs diffs",
    )
    args = parser.parse_args(argv)
    try:
        official = OfficialCode(args.official)
    except (FileNotFoundError, ModuleNotFoundError, RuntimeError) as error:
        parser.error(str(error))
    stubs = ", ".join(official.stubbed) or "none"
    print(f"official commit {official.commit}; torch {torch.__version__}; stubbed imports: {stubs}")
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
    "OP_CASES",
    "STYLES",
    "OfficialCode",
    "compare_with_official",
    "grid_tensor",
    "make_fixtures",
    "write_fixtures",
    "read_fixture",
    "rebuild_weights",
    "tensor_sha256",
]

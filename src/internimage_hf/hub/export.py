"""Export InternImage and FlashInternImage models for deployment: `torch.export` programs and ONNX files.

Both exports run at any batch size and any input size the model accepts (at least 32x32). The graphs hold only
standard operators: the portable DCNv3 and DCNv4 cores are `grid_sample` plus tensor arithmetic, so no custom op is
needed by onnxruntime or TensorRT. The hub kernel (`internimage_hf.kernelize`) is an eager-mode replacement and
cannot be exported: export a model that has not been kernelized.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..hub_kernels import PYTORCH_BACKEND, dcnv3_backend
from ..models.internimage.modeling_internimage import MIN_INPUT_SIZE

# torch.export guards on the stride layout of convolutions whose input is one pixel high or wide (the last stage of a
# 32..63 px input), so a program's dynamic height and width start at 33. The ONNX graph keeps no such guard: the
# file runs from 32 px up.
MIN_PROGRAM_SIZE = MIN_INPUT_SIZE + 1


class _TensorOutputs(nn.Module):
    """Calls an InternImage model and returns its output tensors as a flat tuple, in `output_names` order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(pixel_values, output_hidden_states=False, return_dict=True)
        return tuple(_flatten(outputs.values()))


def _flatten(values) -> list[torch.Tensor]:
    flat = []
    for value in values:
        flat.extend(value if isinstance(value, (tuple, list)) else [value])
    return flat


def example_outputs(model: nn.Module, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """The exported outputs of `model` on `pixel_values`, by name: the model output's fields, tuples as
    ``name.0, name.1, ...``.

    E.g. ``logits`` for `InternImageForImageClassification`, ``last_hidden_state, pooler_output`` for
    `InternImageModel`, ``feature_maps.0, ...`` for `InternImageBackbone`.
    """
    with torch.no_grad():
        outputs = model(pixel_values, output_hidden_states=False, return_dict=True)
    named = {}
    for key, value in outputs.items():
        if isinstance(value, (tuple, list)):
            named.update({f"{key}.{i}": item for i, item in enumerate(value)})
        else:
            named[key] = value
    return named


def example_pixel_values(model: nn.Module, batch_size: int = 2, image_size: int | None = None) -> torch.Tensor:
    """A random ``(batch_size, num_channels, S, S)`` input on the model's device, `S` the config's `image_size`.

    The default batch of 2 keeps the batch dimension dynamic: `torch.export` specialises sizes 0 and 1.
    """
    config = model.config
    size = image_size or config.image_size
    parameter = next(model.parameters())
    return torch.randn(batch_size, config.num_channels, size, size, device=parameter.device, dtype=parameter.dtype)


def _check_exportable(model: nn.Module, pixel_values: torch.Tensor) -> None:
    backend = dcnv3_backend(model)
    if backend != PYTORCH_BACKEND:
        raise ValueError(
            f"`model` runs the DCNv3/DCNv4 kernel {backend!r}, which cannot be exported; export a model that was not "
            "kernelized (the exported graph uses the portable PyTorch core, with the same weights)"
        )
    if model.training:
        raise ValueError("`model` is in training mode; call `model.eval()` before exporting")
    if pixel_values.dim() != 4 or min(pixel_values.shape[-2:]) < MIN_INPUT_SIZE:
        raise ValueError(
            f"`pixel_values` must be (batch, channels, height, width) with height and width >= {MIN_INPUT_SIZE}, "
            f"got shape {tuple(pixel_values.shape)}"
        )


def _dims(dynamic: bool, pixel_values: torch.Tensor) -> dict[int, torch.export.Dim] | None:
    if not dynamic:
        return None
    if pixel_values.shape[0] < 2:
        raise ValueError(
            "`pixel_values` needs a batch of at least 2 for a dynamic export (torch.export specialises a batch of 1)"
        )
    if min(pixel_values.shape[-2:]) < MIN_PROGRAM_SIZE:
        raise ValueError(f"`pixel_values` needs a height and width of at least {MIN_PROGRAM_SIZE} for a dynamic export")
    return {
        0: torch.export.Dim("batch", min=1),
        2: torch.export.Dim("height", min=MIN_PROGRAM_SIZE),
        3: torch.export.Dim("width", min=MIN_PROGRAM_SIZE),
    }


def _named_axes(outputs: dict[str, torch.Tensor]) -> dict[str, dict[int, str]]:
    """TorchScript-exporter names of the dynamic output axes: batch, and the spatial axes of feature maps."""
    return {
        name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} if value.dim() == 4 else {0: "batch"}
        for name, value in outputs.items()
    }


def export_program(
    model: nn.Module, pixel_values: torch.Tensor | None = None, dynamic: bool = True
) -> torch.export.ExportedProgram:
    """`torch.export` an InternImage or FlashInternImage model (classification, base or backbone) in eval mode.

    Args:
        model: an InternImage or FlashInternImage model in eval mode, not kernelized.
        pixel_values: example input ``(B, C, H, W)``; default `example_pixel_values(model)`. For a dynamic
            export `B` must be at least 2.
        dynamic: make batch, height and width dynamic (batch >= 1, height and width >= `MIN_PROGRAM_SIZE`, 33).

    Returns:
        The `ExportedProgram`; its module returns the output tensors as a tuple, in `example_outputs` order.
    """
    pixel_values = example_pixel_values(model) if pixel_values is None else pixel_values
    _check_exportable(model, pixel_values)
    dims = _dims(dynamic, pixel_values)
    return torch.export.export(
        _TensorOutputs(model), (pixel_values,), dynamic_shapes={"pixel_values": dims} if dims else None
    )


def export_onnx(
    model: nn.Module,
    path: str | Path,
    pixel_values: torch.Tensor | None = None,
    dynamic: bool = True,
    dynamo: bool = True,
    opset_version: int | None = None,
) -> Path:
    """Write an InternImage or FlashInternImage model in eval mode to an ONNX file with input ``pixel_values``.

    Args:
        model: an InternImage or FlashInternImage model in eval mode, not kernelized.
        path: the `.onnx` file to write (weights are embedded).
        pixel_values: example input ``(B, C, H, W)``; default `example_pixel_values(model)`.
        dynamic: batch, height and width are dynamic axes (named ``batch``, ``height``, ``width``).
        dynamo: use the `torch.export`-based exporter (the default, recommended). ``False`` uses the
            TorchScript tracer, which is faster to export and also follows the input size.
        opset_version: ONNX opset; default the exporter's.

    Returns:
        `path`. Outputs are named as `example_outputs` names them (``logits`` for classification).
    """
    pixel_values = example_pixel_values(model) if pixel_values is None else pixel_values
    _check_exportable(model, pixel_values)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    outputs = example_outputs(model, pixel_values)
    kwargs = dict(input_names=["pixel_values"], output_names=list(outputs), opset_version=opset_version)
    wrapper = _TensorOutputs(model).eval()
    if dynamo:
        dims = _dims(dynamic, pixel_values)
        torch.onnx.export(
                wrapper, (pixel_values,), str(path), dynamo=True,
                dynamic_shapes={"pixel_values": dims} if dims else None, **kwargs,
            )  # fmt: skip
    else:
        dynamic_axes = _named_axes(outputs) | {"pixel_values": {0: "batch", 2: "height", 3: "width"}}
        torch.onnx.export(
            wrapper, (pixel_values,), str(path), dynamo=False, dynamic_axes=dynamic_axes if dynamic else None,
            **kwargs,
        )  # fmt: skip
    check_onnx_file(path)
    return path


def check_onnx_file(path: str | Path) -> None:
    """Run ONNX's checker with shape inference on a written file, so a graph onnxruntime would refuse to load is an
    error at export time (skipped when the ``onnx`` package is missing)."""
    try:
        import onnx
    except ImportError:
        return
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise RuntimeError(f"the exported file {path} is not a valid ONNX model: {error}") from error


# Files of a checkpoint directory the exporter never writes over (the weights and what loading them reads).
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".json", ".py", ".md", ".txt")


def check_output_path(output: Path, model: str, overwrite: bool = False) -> None:
    """Refuse an output path before anything is loaded or exported: a directory, a file of the source checkpoint
    directory `model` (its weights, configuration, code; even with `overwrite`), or an existing file unless
    `overwrite`."""
    if output.is_dir():
        raise ValueError(f"output: {output} is a directory; give the .onnx file to write")
    source = Path(model)
    if source.is_dir() and output.resolve().parent == source.resolve() and output.suffix in CHECKPOINT_SUFFIXES:
        raise ValueError(f"output: {output} would overwrite a file of the source checkpoint {model}")
    if output.exists() and not overwrite:
        raise ValueError(f"output: {output} exists; pass --overwrite to replace it")


def verify_onnx(
    model: nn.Module, path: str | Path, sizes=((224, 224), (256, 320), (32, 32)), batch_sizes=(1, 2), seed: int = 0
) -> dict[tuple[int, int, int], float]:
    """Run the ONNX file with onnxruntime (CPU) and the model in PyTorch on random inputs of every batch size and
    ``(height, width)``; return the largest absolute difference over all outputs, by ``(batch, height, width)``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    parameter = next(model.parameters())
    errors = {}
    for batch in batch_sizes:
        for height, width in sizes:
            pixel_values = torch.randn(batch, model.config.num_channels, height, width, generator=generator)
            expected = example_outputs(model, pixel_values.to(parameter.device, parameter.dtype))
            actual = session.run(list(expected), {"pixel_values": pixel_values.numpy()})
            errors[batch, height, width] = max(
                (torch.from_numpy(a) - e.float().cpu()).abs().max().item()
                for a, e in zip(actual, expected.values(), strict=True)
            )
    return errors


# The class of each --task: the family's name (its config class's, less "Config") followed by this suffix.
TASKS = {"classification": "ForImageClassification", "base": "Model", "backbone": "Backbone"}
# `preset:NAME` builds an InternImage preset, `preset:flash-NAME` a FlashInternImage one.
FLASH_PRESET_PREFIX = "flash-"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="export_onnx.py",
        description="Export an InternImage or FlashInternImage model to ONNX (dynamic batch, height and width).",
    )
    parser.add_argument(
        "model",
        help="checkpoint directory or hub id (from_pretrained), or preset:NAME / preset:flash-NAME (random weights)",
    )
    parser.add_argument("output", type=Path, help="the .onnx file to write")
    parser.add_argument("--task", choices=sorted(TASKS), default="classification")
    parser.add_argument("--image-size", type=int, default=None, help="example input size (default: config's)")
    parser.add_argument("--static", action="store_true", help="fixed batch and size (the example input's)")
    parser.add_argument("--torchscript", action="store_true", help="TorchScript exporter instead of dynamo")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--verify", action="store_true", help="compare onnxruntime with PyTorch afterwards")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser.parse_args(argv)


def load_model(name: str, task: str) -> nn.Module:
    """`from_pretrained(name)` for the task's class of the checkpoint's family (InternImage or FlashInternImage), or
    a randomly initialised model for ``preset:NAME`` (InternImage) / ``preset:flash-NAME`` (FlashInternImage).

    Raises:
        ValueError: the checkpoint's configuration is neither family's.
    """
    if name.startswith("preset:"):
        config = preset_config(name.removeprefix("preset:"))
        return model_class(config, task)(config).eval()
    from transformers import AutoConfig

    return model_class(AutoConfig.from_pretrained(name), task).from_pretrained(name).eval()


def preset_config(preset: str):
    """The configuration of an InternImage preset (``t``, ``s``, ...) or a FlashInternImage one (``flash-t``, ...)."""
    from ..models.flash_internimage.configuration_flash_internimage import FlashInternImageConfig
    from ..models.internimage.configuration_internimage import InternImageConfig

    if preset.startswith(FLASH_PRESET_PREFIX):
        return FlashInternImageConfig.from_preset(preset.removeprefix(FLASH_PRESET_PREFIX))
    return InternImageConfig.from_preset(preset)


def model_class(config, task: str) -> type[nn.Module]:
    """The model class of `config`'s family for `task` (`TASKS`)."""
    from ..models.flash_internimage import modeling_flash_internimage
    from ..models.internimage import modeling_internimage

    modules = {"InternImage": modeling_internimage, "FlashInternImage": modeling_flash_internimage}
    family = type(config).__name__.removesuffix("Config")
    if family not in modules:
        raise ValueError(
            f"model: a {config.model_type!r} checkpoint; the exporter takes InternImage and FlashInternImage models"
        )
    return getattr(modules[family], family + TASKS[task])


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_output_path(args.output, args.model, args.overwrite)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        model = load_model(args.model, args.task)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    pixel_values = example_pixel_values(model, image_size=args.image_size)
    start = time.perf_counter()
    export_onnx(model, args.output, pixel_values, dynamic=not args.static, dynamo=not args.torchscript,
                opset_version=args.opset)  # fmt: skip
    print(f"wrote {args.output} in {time.perf_counter() - start:.1f} s")
    if args.verify:
        sizes = [tuple(pixel_values.shape[-2:])] if args.static else [(224, 224), (256, 320), (32, 32)]
        batches = [pixel_values.shape[0]] if args.static else [1, 2]
        for (batch, height, width), error in verify_onnx(model, args.output, sizes, batches).items():
            print(f"onnxruntime vs PyTorch at {batch}x{height}x{width}: max abs difference {error:.2e}")
    return 0


__all__ = [
    "MIN_PROGRAM_SIZE",
    "check_onnx_file",
    "check_output_path",
    "example_outputs",
    "example_pixel_values",
    "export_onnx",
    "export_program",
    "load_model",
    "main",
    "verify_onnx",
]

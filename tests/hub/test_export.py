"""`internimage_hf.hub.export`: ONNX files (both exporters) and `torch.export` programs at every input size, for
InternImage and FlashInternImage."""

import warnings

import pytest
import torch

from internimage_hf import (
    FlashInternImageConfig,
    FlashInternImageForImageClassification,
    InternImageConfig,
    InternImageForImageClassification,
)
from internimage_hf.conversion.keys import convert_official_state_dict
from internimage_hf.hub.export import (
    _TensorOutputs,
    example_outputs,
    example_pixel_values,
    export_onnx,
    export_program,
    load_model,
    main,
    verify_onnx,
)

ATOL = 1e-4
# Every case of the issue: three sizes (the smallest the model accepts among them) and two batch sizes.
SIZES = ((224, 224), (256, 320), (32, 32))
BATCH_SIZES = (1, 2)


@pytest.fixture(scope="module")
def model():
    """A tiny classifier whose DCNv3 offsets and weights matter (the official init predicts zero offsets)."""
    config = InternImageConfig(channels=16, depths=(1, 1, 1, 1), groups=(2, 2, 4, 4), num_labels=3)
    model = InternImageForImageClassification(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".dcn.offset." in name or ".dcn.mask." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


@pytest.fixture(scope="module")
def example(model):
    return example_pixel_values(model, image_size=64)


def assert_onnx_matches(model, path):
    errors = verify_onnx(model, path, SIZES, BATCH_SIZES)
    assert set(errors) == {(b, h, w) for b in BATCH_SIZES for h, w in SIZES}
    assert max(errors.values()) < ATOL, errors


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_matches_pytorch_at_every_size(model, example, dynamo, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation and tracer notes
        path = export_onnx(model, tmp_path / "model.onnx", example, dynamo=dynamo)
    import onnx

    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["pixel_values"] and [o.name for o in graph.output] == ["logits"]
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3], f"batch, height and width must be dynamic, got {dims}"
    assert not {node.domain for node in graph.node} - {"", "ai.onnx"}, "no custom operator may be needed"
    assert_onnx_matches(model, path)


@pytest.mark.parametrize("style", ["tiny_t", "tiny_s", "tiny_l", "tiny_h", "tiny_g", "tiny_rc"])
def test_torchscript_export_of_every_official_style(fixture_cases, style, tmp_path):
    """Each official option (post-norm, layer scale, offset scale, the H/G blocks with the centre feature scale and
    CLIP projector, no centre point) exports with the TorchScript exporter and runs in onnxruntime."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    case = fixture_cases[style]
    model = InternImageForImageClassification(InternImageConfig(**case.model_kwargs)).eval()
    model.load_state_dict(convert_official_state_dict(case.state_dict), strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(model, tmp_path / f"{style}.onnx", example_pixel_values(model, image_size=64), dynamo=False)
    errors = verify_onnx(model, path, ((64, 64), (96, 128)), (1, 2))
    assert max(errors.values()) < ATOL, errors


def test_static_export_fixes_the_input_shape(model, example, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(model, tmp_path / "static.onnx", example, dynamic=False, dynamo=False)
    dims = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 64, 64]
    assert max(verify_onnx(model, path, [(64, 64)], [2]).values()) < ATOL


def test_export_program_follows_batch_and_size(model, example):
    program = export_program(model, example)
    for shape in [(1, 3, 33, 47), (2, 3, 96, 64), (3, 3, 224, 224)]:
        pixel_values = torch.randn(shape)
        (logits,) = program.module()(pixel_values)
        torch.testing.assert_close(logits, model(pixel_values).logits, atol=ATOL, rtol=0)


@pytest.mark.xfail(
    strict=True,
    reason="torch.export guards on the stride layout of the convolutions that see the 1-px stage-4 map of a 32..63 "
    "px input (DCNv3 depthwise conv, InternImageDownsample, InternImageConvHead), so dynamic dims start at 33",
)
def test_torch_export_accepts_32x32(model, example):
    dims = {
        0: torch.export.Dim("batch", min=1),
        2: torch.export.Dim("height", min=32),
        3: torch.export.Dim("w", min=32),
    }
    program = torch.export.export(_TensorOutputs(model), (example,), dynamic_shapes={"pixel_values": dims})
    pixel_values = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(program.module()(pixel_values)[0], model(pixel_values).logits, atol=ATOL, rtol=0)


def test_example_outputs_name_every_output(model, example):
    assert list(example_outputs(model, example)) == ["logits"]
    backbone_outputs = example_outputs(_Backbone(), example)
    assert list(backbone_outputs) == ["feature_maps.0", "feature_maps.1"]


class _Backbone(torch.nn.Module):
    def forward(self, pixel_values, output_hidden_states=False, return_dict=True):
        from transformers.modeling_outputs import BackboneOutput

        return BackboneOutput(feature_maps=(pixel_values, pixel_values[:, :1]))


@pytest.mark.parametrize(
    "prepare, kwargs, message",
    [
        (lambda m: m.train(), {}, "training mode"),
        (lambda m: m, {"pixel_values": torch.randn(2, 3, 16, 64)}, "height and width >= 32"),
        (lambda m: m, {"pixel_values": torch.randn(1, 3, 64, 64)}, "batch of at least 2"),
        (lambda m: m, {"pixel_values": torch.randn(2, 3, 32, 64)}, "at least 33 for a dynamic export"),
    ],
)
def test_bad_export_requests_raise_clear_errors(model, prepare, kwargs, message, tmp_path):
    prepare(model)
    try:
        with pytest.raises(ValueError, match=message):
            export_onnx(model, tmp_path / "model.onnx", **kwargs)
    finally:
        model.eval()


def test_kernelized_model_is_refused(model, monkeypatch, tmp_path):
    monkeypatch.setattr("internimage_hf.hub.export.dcnv3_backend", lambda m: "hub:kernels-community/dcnv3@v1")
    with pytest.raises(ValueError, match="cannot be exported"):
        export_onnx(model, tmp_path / "model.onnx")


def test_cli_writes_and_verifies(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    tiny = InternImageConfig(channels=16, depths=(1, 1, 1, 1), groups=(2, 2, 4, 4), num_labels=3)
    InternImageForImageClassification(tiny).save_pretrained(tmp_path / "checkpoint")
    output = tmp_path / "out" / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([str(tmp_path / "checkpoint"), str(output), "--torchscript", "--image-size", "64", "--verify"]) == 0
    printed = capsys.readouterr().out
    assert output.is_file() and f"wrote {output}" in printed
    assert printed.count("max abs difference") == 6


@pytest.fixture
def checkpoint(tmp_path):
    tiny = InternImageConfig(channels=16, depths=(1, 1, 1, 1), groups=(2, 2, 4, 4), num_labels=3)
    InternImageForImageClassification(tiny).save_pretrained(tmp_path / "checkpoint")
    return tmp_path / "checkpoint"


@pytest.mark.parametrize("overwrite", [False, True])
def test_cli_never_writes_over_the_source_checkpoint(checkpoint, capsys, overwrite):
    weights = checkpoint / "model.safetensors"
    before = weights.read_bytes()
    argv = [str(checkpoint), str(weights)] + (["--overwrite"] if overwrite else [])
    assert main(argv) == 2
    assert "would overwrite a file of the source checkpoint" in capsys.readouterr().err
    assert weights.read_bytes() == before


def test_cli_refuses_an_existing_file_or_a_directory_before_exporting(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("internimage_hf.hub.export.load_model", lambda *a: pytest.fail("loaded before the check"))
    existing = tmp_path / "old.onnx"
    existing.write_bytes(b"previous export")
    assert main([str(checkpoint), str(existing)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == b"previous export"
    assert main([str(checkpoint), str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_cli_overwrites_an_earlier_export_when_told(checkpoint, tmp_path):
    pytest.importorskip("onnx")
    existing = checkpoint / "model.onnx"  # an export beside the weights is not a file of the checkpoint
    existing.write_bytes(b"previous export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([str(checkpoint), str(existing), "--torchscript", "--image-size", "64", "--overwrite"]) == 0
    assert existing.read_bytes() != b"previous export"


def test_an_invalid_onnx_graph_is_an_export_error(tmp_path):
    onnx = pytest.importorskip("onnx")
    # An Unsqueeze at an axis its input does not have: what the TorchScript exporter once wrote for the H/G gate.
    node = onnx.helper.make_node("Unsqueeze", ["x", "axes"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "bad",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor("axes", onnx.TensorProto.INT64, [1], [5])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    from internimage_hf.hub.export import check_onnx_file

    with pytest.raises(RuntimeError, match="not a valid ONNX model"):
        check_onnx_file(path)


# ------------------------------------------------------------------------------------------------ FlashInternImage


@pytest.fixture(scope="module")
def flash_model():
    """A tiny FlashInternImage classifier (with the depthwise convolution of S/B/L) whose DCNv4 offsets and weights
    matter (the official init predicts zero offsets)."""
    config = FlashInternImageConfig(channels=16, depths=(1, 1, 1, 1), groups=(2, 2, 4, 4), num_labels=3,
                                    dw_kernel_size=3)  # fmt: skip
    model = FlashInternImageForImageClassification(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".dcn.offset_mask." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_flash_onnx_matches_pytorch_at_every_size(flash_model, dynamo, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(flash_model, tmp_path / "flash.onnx", example_pixel_values(flash_model, image_size=64),
                           dynamo=dynamo)  # fmt: skip
    import onnx

    assert not {node.domain for node in onnx.load(str(path)).graph.node} - {"", "ai.onnx"}
    assert_onnx_matches(flash_model, path)


def test_flash_export_program_follows_batch_and_size(flash_model):
    program = export_program(flash_model, example_pixel_values(flash_model, image_size=64))
    for shape in [(1, 3, 33, 47), (3, 3, 96, 128)]:
        pixel_values = torch.randn(shape)
        (logits,) = program.module()(pixel_values)
        torch.testing.assert_close(logits, flash_model(pixel_values).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("task", "suffix"), [("classification", "ForImageClassification"), ("base", "Model"),
                                              ("backbone", "Backbone")])  # fmt: skip
def test_cli_loads_each_family_from_its_checkpoint(flash_model, checkpoint, task, suffix, tmp_path):
    flash_model.save_pretrained(tmp_path / "flash")
    for directory, family in ((tmp_path / "flash", "FlashInternImage"), (checkpoint, "InternImage")):
        loaded = load_model(str(directory), task)
        assert type(loaded).__name__ == family + suffix and not loaded.training
    loaded = load_model(str(tmp_path / "flash"), "classification")
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, flash_model(pixel_values).logits, atol=0, rtol=0)


def test_cli_presets_of_both_families():
    flash = load_model("preset:flash-t", "backbone")
    assert type(flash).__name__ == "FlashInternImageBackbone" and flash.config.groups == [4, 8, 16, 32]
    assert type(load_model("preset:t", "base")).__name__ == "InternImageModel"


def test_cli_refuses_a_checkpoint_of_another_model(tmp_path, capsys):
    from transformers import ConvNextConfig, ConvNextModel

    ConvNextModel(ConvNextConfig(hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])).save_pretrained(tmp_path / "cnx")
    assert main([str(tmp_path / "cnx"), str(tmp_path / "model.onnx")]) == 2
    assert "a 'convnext' checkpoint; the exporter takes InternImage and FlashInternImage" in capsys.readouterr().err
    assert not (tmp_path / "model.onnx").exists()

"""Remote code: a saved directory that a plain `transformers` install loads with `trust_remote_code=True`.

The loading test runs in a fresh interpreter started with `-S` (no site hooks, so the editable install's path
entry is not added) and only this environment's site-packages on PYTHONPATH: `import internimage_hf` fails there.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification
from transformers.dynamic_module_utils import get_imports, get_relative_imports

# The top-level name is a placeholder without torchvision in transformers < 5.5; the module is always real.
from transformers.models.auto.image_processing_auto import AutoImageProcessor
from transformers.utils import is_torchvision_available

import internimage_hf
from internimage_hf import (
    InternImageConfig,
    InternImageForImageClassification,
    InternImageImageProcessor,
    InternImageImageProcessorPil,
)
from internimage_hf.hub import remote_code
from internimage_hf.hub.remote_code import (
    GENERATED_MARKER,
    RemoteCodeError,
    add_remote_code,
    generate_module,
    is_generated_file,
    remote_code_files,
    remote_code_modules,
    remote_module_name,
)

PACKAGE_DIR = Path(internimage_hf.__file__).parent
HEADER_LINES = 2


def tiny_classifier() -> InternImageForImageClassification:
    """A small classifier whose every weight is random (offsets too, so the sampling leaves the regular grid)."""
    torch.manual_seed(0)
    config = InternImageConfig(
        channels=16, depths=[1, 1, 2, 1], groups=[1, 2, 4, 8], num_labels=3, id2label={0: "cat", 1: "dog", 2: "owl"}
    )
    model = InternImageForImageClassification(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return model


def processor_class():
    return InternImageImageProcessor if is_torchvision_available() else InternImageImageProcessorPil


def save_checkpoint(directory: Path) -> InternImageForImageClassification:
    model = tiny_classifier()
    model.save_pretrained(directory)
    processor_class()(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(directory)
    return model


def sample_image() -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((80, 96, 3)) * 255).astype("uint8"))


# --- generation


def package_import_lines(source: str) -> set[int]:
    """0-based line numbers covered by imports of the package (relative, or absolute `internimage_hf...`)."""
    lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("internimage_hf")):
            lines.update(range(node.lineno - 1, node.end_lineno))
    return lines


def test_generated_files_are_the_package_modules_with_relative_imports():
    files = remote_code_files()
    assert files == remote_code_files()  # deterministic
    assert list(files) == [
        "configuration_internimage_hf.py",
        "modeling_internimage_hf.py",
        "image_processing_internimage_hf.py",
        "image_processing_pil_internimage_hf.py",
        "dcnv3_hf.py",
        "checkpoint_keys_hf.py",
    ]
    for module, (name, text) in zip(remote_code_modules(), files.items(), strict=True):
        source = (PACKAGE_DIR.parent / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        assert text.startswith(GENERATED_MARKER)
        generated = text.splitlines()[HEADER_LINES:]
        original = source.splitlines()
        imports = package_import_lines(source)
        matcher = difflib.SequenceMatcher(None, original, generated, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                continue
            # Only package imports changed: into flat relative imports, or (inside functions) an ImportError.
            assert set(range(i1, i2)) <= imports, (name, original[i1:i2])
            for line in generated[j1:j2]:
                assert line.strip().startswith(("from .", "raise ImportError(")), (name, line)
        ast.parse(text)


def test_generated_files_are_self_contained(tmp_path):
    files = remote_code_files()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    stems = {Path(name).stem for name in files}
    for name in files:
        # What Transformers' loader fetches and checks for every file of a hub repo.
        assert set(get_relative_imports(tmp_path / name)) <= stems, name
        required = set(get_imports(tmp_path / name))
        assert not required & {"internimage_hf", "kernels"}, (name, required)
    modeling = files["modeling_internimage_hf.py"]
    assert "from .configuration_internimage_hf import InternImageConfig" in modeling
    assert "from .checkpoint_keys_hf import official_hub_key_mapping" in modeling
    assert "from .dcnv3_hf import DCNV3_INIT_ATTR" in modeling
    assert "internimage_hf.hub_kernels.kernelizing, which is not part of the remote code" in modeling


def test_generated_file_names_must_not_clash(monkeypatch):
    monkeypatch.setattr(remote_code, "remote_module_name", lambda module: "same_hf")
    with pytest.raises(RemoteCodeError, match="would both be written as same_hf.py"):
        remote_code_modules()


PROBE_MODULE = textwrap.dedent(
    '''
    """A module of the model's folder written the ways the package's modules may import each other."""

    from ...ops.dcnv3 import (
        DCNv3Core,
        dcnv3_core as core,  # the core
    )
    from internimage_hf.models.internimage.configuration_internimage import PRESETS
    from .checkpoint_keys import official_hub_key_mapping
    from ... import InternImageConfig  # re-exported by the package root


    def backend():
        if PRESETS:
            from ...hub_kernels import dcnv3_backend
            from ...ops.dcnv3 import softmax_over_points; x = 1
        return dcnv3_backend, softmax_over_points, x
    '''
)


def load_probe(tmp_path, monkeypatch, source: str) -> str:
    """Import `source` as a module of the model's folder (it is never written into the package directory)."""
    import importlib.util

    name = "internimage_hf.models.internimage._remote_code_probe"
    path = tmp_path / "probe.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return name


def test_generation_rewrites_every_import_form(tmp_path, monkeypatch):
    name = load_probe(tmp_path, monkeypatch, PROBE_MODULE)
    selected = [
        name,
        "internimage_hf.ops.dcnv3",
        "internimage_hf.models.internimage.configuration_internimage",
        "internimage_hf.models.internimage.checkpoint_keys",
    ]
    text = generate_module(name, selected)
    body = "\n".join(text.splitlines()[HEADER_LINES:])
    assert "\nfrom .dcnv3_hf import DCNv3Core, dcnv3_core as core\n" in body
    assert "\nfrom .configuration_internimage_hf import PRESETS\n" in body
    assert "\nfrom .checkpoint_keys_hf import official_hub_key_mapping\n" in body
    assert "\nfrom .configuration_internimage_hf import InternImageConfig  # re-exported by the package root\n" in body
    assert "        raise ImportError('dcnv3_backend comes from internimage_hf.hub_kernels.kernelizing" in body
    assert "        from .dcnv3_hf import softmax_over_points; x = 1\n" in body
    assert body.count("internimage_hf.") == 1  # only inside the ImportError message
    ast.parse(text)


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("from ...ops import dcnv3", "does not import a name"),
        ("import internimage_hf.ops.dcnv3", "cannot become a relative"),
    ],
)
def test_generation_refuses_imports_transformers_cannot_follow(tmp_path, monkeypatch, statement, message):
    name = load_probe(tmp_path, monkeypatch, statement + "\n")
    with pytest.raises(RemoteCodeError, match=message):
        generate_module(name, [name, "internimage_hf.ops.dcnv3"])


# --- the directory


def test_add_remote_code_writes_auto_maps_and_is_repeatable(tmp_path):
    save_checkpoint(tmp_path)
    written = add_remote_code(tmp_path)
    assert [p.name for p in written][-2:] == ["config.json", "preprocessor_config.json"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_internimage_hf.InternImageConfig",
        "AutoModel": "modeling_internimage_hf.InternImageModel",
        "AutoModelForImageClassification": "modeling_internimage_hf.InternImageForImageClassification",
        "AutoBackbone": "modeling_internimage_hf.InternImageBackbone",
    }
    processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor["auto_map"] == {
        "AutoImageProcessor": {
            "torchvision": "image_processing_internimage_hf.InternImageImageProcessor",
            "pil": "image_processing_pil_internimage_hf.InternImageImageProcessorPil",
        }
    }
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    add_remote_code(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_package_loads_a_remote_code_directory_with_its_own_classes(tmp_path):
    model = save_checkpoint(tmp_path)
    add_remote_code(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is InternImageForImageClassification
    assert type(processor) is processor_class()
    pixel_values = processor(images=sample_image(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values).logits, model(pixel_values).logits)


def test_add_remote_code_refuses_foreign_code_and_other_models(tmp_path):
    with pytest.raises(RemoteCodeError, match="has no config.json"):
        add_remote_code(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "upernet"}))
    with pytest.raises(RemoteCodeError, match="model_type 'upernet'.*internimage_hf installed"):
        add_remote_code(tmp_path)

    save_checkpoint(tmp_path / "ckpt")
    own_code = tmp_path / "ckpt" / "modeling_internimage_hf.py"
    own_code.write_text("# my own modeling code\n")
    config_before = (tmp_path / "ckpt" / "config.json").read_text()
    with pytest.raises(RemoteCodeError, match="was not generated by internimage_hf"):
        add_remote_code(tmp_path / "ckpt")
    assert own_code.read_text() == "# my own modeling code\n"
    assert (tmp_path / "ckpt" / "config.json").read_text() == config_before
    assert not (tmp_path / "ckpt" / "configuration_internimage_hf.py").exists()
    (tmp_path / "ckpt" / "dcnv3_hf.py").symlink_to(own_code)
    own_code.unlink()
    with pytest.raises(RemoteCodeError, match="dcnv3_hf.py exists and was not generated"):
        add_remote_code(tmp_path / "ckpt")


def test_generated_files_are_recognised(tmp_path):
    save_checkpoint(tmp_path)
    add_remote_code(tmp_path)
    generated = sorted(p.name for p in tmp_path.iterdir() if is_generated_file(p))
    assert generated == sorted(remote_code_files())
    (tmp_path / "own.py").write_text("import torch\n")
    (tmp_path / "link.py").symlink_to(tmp_path / "dcnv3_hf.py")
    assert not is_generated_file(tmp_path / "own.py") and not is_generated_file(tmp_path / "link.py")


# --- loading without the package

LOAD_WITHOUT_PACKAGE = textwrap.dedent(
    """
    import glob, json, sys
    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, pipeline
    from transformers.dynamic_module_utils import check_imports
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    try:
        import internimage_hf
        sys.exit("internimage_hf is importable")
    except ImportError:
        pass
    checkpoint, resaved = sys.argv[1], sys.argv[2]
    for path in sorted(glob.glob(checkpoint + "/*.py")):
        check_imports(path)  # what a hub download checks for every file
    model = AutoModelForImageClassification.from_pretrained(checkpoint, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    image = Image.open(sys.argv[3])
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values).logits
    base = AutoModel.from_pretrained(checkpoint, trust_remote_code=True)
    top = pipeline("image-classification", model=checkpoint, trust_remote_code=True)(image, top_k=1)[0]["label"]
    try:
        model.dcnv3_backend
        backend_error = None
    except ImportError as error:
        backend_error = str(error)
    model.save_pretrained(resaved)  # Transformers' own custom-code saving copies the modules on
    processor.save_pretrained(resaved)
    reloaded = AutoModelForImageClassification.from_pretrained(resaved, trust_remote_code=True).eval()
    with torch.no_grad():
        relogits = reloaded(pixel_values).logits
    torch.save({"pixel_values": pixel_values, "logits": logits, "relogits": relogits}, sys.argv[4])
    print(json.dumps({
        "model": type(model).__module__ + "." + type(model).__name__,
        "processor": type(processor).__module__ + "." + type(processor).__name__,
        "base": type(base).__name__,
        "config": type(AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)).__module__,
        "top": top,
        "backend_error": backend_error,
    }))
    """
)


def test_directory_loads_without_the_package(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    model = save_checkpoint(checkpoint)
    add_remote_code(checkpoint)
    sample_image().save(tmp_path / "image.png")
    site_packages = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sorted(site_packages)),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-S", "-c", LOAD_WITHOUT_PACKAGE, str(checkpoint), str(tmp_path / "resaved"),
         str(tmp_path / "image.png"), str(tmp_path / "outputs.pt")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"].startswith("transformers_modules.")
    assert report["model"].endswith("modeling_internimage_hf.InternImageForImageClassification")
    processor_module = remote_module_name(processor_class().__module__)
    assert report["processor"].endswith(f".{processor_module}.{processor_class().__name__}")
    assert report["config"].endswith("configuration_internimage_hf")
    assert report["base"] == "InternImageModel"
    assert "install internimage_hf" in report["backend_error"]

    outputs = torch.load(tmp_path / "outputs.pt")
    processor = processor_class().from_pretrained(checkpoint)
    expected_pixels = processor(images=Image.open(tmp_path / "image.png"), return_tensors="pt")["pixel_values"]
    assert torch.equal(outputs["pixel_values"], expected_pixels)
    with torch.no_grad():
        expected = model(expected_pixels).logits
    assert torch.equal(outputs["logits"], expected)
    assert torch.equal(outputs["relogits"], expected)
    assert report["top"] == model.config.id2label[int(expected.argmax())]

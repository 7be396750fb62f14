"""A checkpoint written by an earlier release keeps loading: with the package, and with its remote code alone.

`tests/fixtures/previous_release_checkpoint` was written by commit d2fa7df (its README.md says how): a tiny
classifier, its image processor, the remote code `add_remote_code` generated then, and the logits of a fixed input.
The remote-code run hides the package the way `test_remote_code.py` does: a fresh interpreter started with `-S` and
only this environment's site-packages on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

# The top-level name is a placeholder without torchvision in transformers < 5.5; the module is always real.
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from internimage_hf import (
    InternImageForImageClassification,
    InternImageImageProcessor,
    InternImageImageProcessorPil,
)
from internimage_hf.hub.remote_code import add_remote_code, is_generated_file, remote_code_files

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "previous_release_checkpoint"
TOLERANCE = 1e-5


def expected_outputs() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "expected_outputs.safetensors")


def test_package_loads_the_previous_release_checkpoint():
    expected = expected_outputs()
    model = AutoModelForImageClassification.from_pretrained(FIXTURE).eval()
    assert type(model) is InternImageForImageClassification  # the package's class, not the stored remote code
    # the torchvision backend, or the PIL one where torchvision is not installed (the minimal environment)
    assert type(AutoImageProcessor.from_pretrained(FIXTURE)) in (
        InternImageImageProcessor,
        InternImageImageProcessorPil,
    )
    with torch.no_grad():
        logits = model(expected["pixel_values"]).logits
    torch.testing.assert_close(logits, expected["logits"], atol=TOLERANCE, rtol=0)


LOAD_WITHOUT_PACKAGE = textwrap.dedent(
    """
    import json, sys
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageClassification
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    try:
        import internimage_hf
        sys.exit("internimage_hf is importable")
    except ImportError:
        pass
    checkpoint, outputs = sys.argv[1], sys.argv[2]
    model = AutoModelForImageClassification.from_pretrained(checkpoint, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    pixel_values = load_file(checkpoint + "/expected_outputs.safetensors")["pixel_values"]
    with torch.no_grad():
        save_file({"logits": model(pixel_values).logits.contiguous()}, outputs)
    print(json.dumps({
        "model": type(model).__module__ + "." + type(model).__name__,
        "processor": type(processor).__module__ + "." + type(processor).__name__,
    }))
    """
)


def load_without_the_package(checkpoint: Path, tmp_path: Path) -> tuple[dict, torch.Tensor]:
    """(class names, logits) of `checkpoint` loaded with ``trust_remote_code=True`` where the package is hidden."""
    site_packages = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sorted(site_packages)),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HUB_OFFLINE": "1",
    }
    outputs = tmp_path / "outputs.safetensors"
    result = subprocess.run(
        [sys.executable, "-S", "-c", LOAD_WITHOUT_PACKAGE, str(checkpoint), str(outputs)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), load_file(outputs)["logits"]


def test_previous_release_remote_code_loads_without_the_package(tmp_path):
    checkpoint = shutil.copytree(FIXTURE, tmp_path / "checkpoint")
    report, logits = load_without_the_package(checkpoint, tmp_path)
    assert report["model"].startswith("transformers_modules.")
    assert report["model"].endswith(".modeling_internimage_hf.InternImageForImageClassification")
    assert report["processor"].startswith("transformers_modules.")
    torch.testing.assert_close(logits, expected_outputs()["logits"], atol=TOLERANCE, rtol=0)


def test_new_remote_code_replaces_the_previous_release_files(tmp_path):
    checkpoint = shutil.copytree(FIXTURE, tmp_path / "checkpoint")
    own_file = checkpoint / "my_notes_hf.py"  # not generated: never touched
    own_file.write_text("NOTE = 1\n")
    assert (checkpoint / "conversion_keys_hf.py").is_file()  # written by the previous release
    add_remote_code(checkpoint)
    generated = {path.name for path in checkpoint.glob("*_hf.py") if is_generated_file(path)}
    assert generated == set(remote_code_files())
    assert not (checkpoint / "conversion_keys_hf.py").exists()
    assert own_file.read_text() == "NOTE = 1\n"
    report, logits = load_without_the_package(checkpoint, tmp_path)
    assert report["model"].endswith(".modeling_internimage_hf.InternImageForImageClassification")
    torch.testing.assert_close(logits, expected_outputs()["logits"], atol=TOLERANCE, rtol=0)

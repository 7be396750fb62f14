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

from internimage_hf import InternImageForImageClassification, InternImageImageProcessor

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "previous_release_checkpoint"
TOLERANCE = 1e-5


def expected_outputs() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "expected_outputs.safetensors")


def test_package_loads_the_previous_release_checkpoint():
    expected = expected_outputs()
    model = AutoModelForImageClassification.from_pretrained(FIXTURE).eval()
    assert type(model) is InternImageForImageClassification  # the package's class, not the stored remote code
    assert type(AutoImageProcessor.from_pretrained(FIXTURE)) is InternImageImageProcessor
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


def test_previous_release_remote_code_loads_without_the_package(tmp_path):
    checkpoint = shutil.copytree(FIXTURE, tmp_path / "checkpoint")
    site_packages = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sorted(site_packages)),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-S", "-c", LOAD_WITHOUT_PACKAGE, str(checkpoint), str(tmp_path / "outputs.safetensors")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"].startswith("transformers_modules.")
    assert report["model"].endswith(".modeling_internimage_hf.InternImageForImageClassification")
    assert report["processor"].startswith("transformers_modules.")
    logits = load_file(tmp_path / "outputs.safetensors")["logits"]
    torch.testing.assert_close(logits, expected_outputs()["logits"], atol=TOLERANCE, rtol=0)

"""Transformers' own kernel switch on InternImage models (``from_pretrained(..., use_kernels=True)``,
``kernel_config=``, ``model.use_kernels``): the same kernel and rules as `internimage_hf.kernelize`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_classifier import tiny_model

from internimage_hf import InternImageConfig, InternImageForImageClassification, hub_kernels

KernelConfig = pytest.importorskip("transformers").KernelConfig
SRC_DIR = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def saved(tmp_path, kernels_module, clean_env):
    tiny_model().save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def _variant(build) -> str:
    return f"local:{build.root / 'build' / build.variant_dir.name}"


def _logits(model, pixels):
    with torch.no_grad():
        return model(pixels).logits


def test_use_kernels_runs_the_kernel_kernelize_picks(saved, clean_env, cpu_kernel_build):
    clean_env.setenv(hub_kernels.KERNEL_ENV, str(cpu_kernel_build.root))
    via_transformers = InternImageForImageClassification.from_pretrained(saved, use_kernels=True)
    direct = hub_kernels.kernelize(InternImageForImageClassification.from_pretrained(saved))
    plain = InternImageForImageClassification.from_pretrained(saved)
    assert via_transformers.dcnv3_backend == direct.dcnv3_backend == _variant(cpu_kernel_build)
    assert via_transformers.use_kernels and plain.dcnv3_backend == "pytorch" and not plain.use_kernels
    pixels = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(_logits(via_transformers, pixels), _logits(direct, pixels), atol=0, rtol=0)
    torch.testing.assert_close(_logits(via_transformers, pixels), _logits(plain, pixels), atol=1e-4, rtol=0)


def test_kernel_config_names_a_local_build_on_cpu_too(saved, cpu_kernel_build):
    # Transformers' own KernelConfig path refuses CPU and loads the variant of the torch build whatever the device.
    config = KernelConfig({"DCNv3Core": f"{cpu_kernel_build.root}:DCNv3Core"}, use_local_kernel=True)
    model = InternImageForImageClassification.from_pretrained(saved, kernel_config=config)
    direct = hub_kernels.kernelize(
        InternImageForImageClassification.from_pretrained(saved), local_path=cpu_kernel_build.root
    )
    assert model.dcnv3_backend == direct.dcnv3_backend == _variant(cpu_kernel_build)
    pixels = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_logits(model, pixels), _logits(direct, pixels), atol=0, rtol=0)


def test_switching_kernels_off_and_on_and_training(saved, clean_env, cpu_kernel_build):
    clean_env.setenv(hub_kernels.KERNEL_ENV, str(cpu_kernel_build.root))
    model = InternImageForImageClassification.from_pretrained(saved)
    model.set_use_kernels(True)
    assert model.use_kernels and model.dcnv3_backend == _variant(cpu_kernel_build)
    model.train()  # Transformers >= 5.25 re-kernelizes for training here; the kernel has a backward
    assert model.dcnv3_backend == _variant(cpu_kernel_build)
    labels = torch.tensor([0, 2])
    model(torch.randn(2, 3, 64, 64), labels=labels).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.set_use_kernels(False)
    assert not model.use_kernels and model.dcnv3_backend == "pytorch"


def test_use_hub_kernels_off_keeps_pytorch(saved, clean_env, cpu_kernel_build, caplog):
    clean_env.setenv(hub_kernels.KERNEL_ENV, str(cpu_kernel_build.root))
    clean_env.setenv("USE_HUB_KERNELS", "0")
    with caplog.at_level(logging.WARNING, logger=hub_kernels.__name__):
        model = InternImageForImageClassification.from_pretrained(saved, use_kernels=True)
    assert model.dcnv3_backend == "pytorch" and not model.use_kernels
    assert any("USE_HUB_KERNELS" in r.getMessage() for r in caplog.records)


def test_kernel_config_for_another_device_keeps_pytorch(saved, cpu_kernel_build):
    config = KernelConfig({"DCNv3Core": {"cuda": f"{cpu_kernel_build.root}:DCNv3Core"}}, use_local_kernel=True)
    model = InternImageForImageClassification.from_pretrained(saved, kernel_config=config)
    assert model.dcnv3_backend == "pytorch"


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"LlamaRMSNorm": "org/norm:LlamaRMSNorm"}, "InternImage does not have"),
        ({"DCNv3Core": "org/dcnv3"}, "must be 'org/name:DCNv3Core'"),
        ({"DCNv3Core": "org/dcnv3:Norm"}, "must name one of the kernel's layers"),
        ({"DCNv3Core": ("org/dcnv3:DCNv3Core", {"branch": "main"})}, "only revision/version/trust_remote_code"),
        ({"DCNv3Core": "org/a:DCNv3Core", "InternImageMLP": "org/b:InternImageMLP"}, "names several: org/a, org/b"),
    ],
)
def test_kernel_config_errors_name_the_entry(mapping, message):
    with pytest.raises(ValueError, match=message):
        hub_kernels.kernel_config_source(KernelConfig(mapping), "cpu")


def test_kernel_config_hub_entries_become_kernelize_arguments():
    config = KernelConfig({"DCNv3Core": ("org/dcnv3:DCNv3Core", {"revision": "abc", "trust_remote_code": True})})
    assert hub_kernels.kernel_config_source(config, "cuda") == {
        "repo_id": "org/dcnv3",
        "revision": "abc",
        "trust_remote_code": True,
    }
    same = {"DCNv3Core": "org/dcnv3:DCNv3Core", "InternImageMLP": "org/dcnv3:InternImageMLP"}
    assert hub_kernels.kernel_config_source(KernelConfig(same), "cpu") == {"repo_id": "org/dcnv3"}
    assert hub_kernels.kernel_config_source(None, "cpu") == {}


_QUIET_SCRIPT = """
import json, socket, sys

attempts = []


def refuse(self, address, *args, **kwargs):
    attempts.append(str(address))
    raise OSError("the test allows no network")


socket.socket.connect = refuse
socket.socket.connect_ex = refuse

import internimage_hf  # noqa: E402
from transformers import AutoBackbone, AutoModel, AutoModelForImageClassification  # noqa: E402
from transformers import UperNetConfig, UperNetForSemanticSegmentation  # noqa: E402

folder = sys.argv[1]
kwargs = dict(channels=16, depths=[1, 1, 1, 1], groups=[1, 2, 4, 8], num_labels=3)
config = internimage_hf.InternImageConfig(**kwargs)
backbone = internimage_hf.InternImageConfig(**kwargs, out_indices=[1, 2, 3, 4])
internimage_hf.InternImageForImageClassification(config).save_pretrained(folder + "/cls")
internimage_hf.InternImageBackbone(backbone).save_pretrained(folder + "/backbone")
upernet = UperNetConfig(backbone_config=backbone, num_labels=3)
UperNetForSemanticSegmentation(upernet).save_pretrained(folder + "/upernet")
print("LOADING", flush=True)
print("LOADING", file=sys.stderr, flush=True)
loaded = [
    AutoModelForImageClassification.from_pretrained(folder + "/cls"),
    AutoModel.from_pretrained(folder + "/cls"),
    internimage_hf.InternImageBackbone.from_pretrained(folder + "/backbone"),
]
try:
    loaded.append(UperNetForSemanticSegmentation.from_pretrained(folder + "/upernet"))
except ValueError as err:  # Transformers >= 5.25 beside an older kernels fails every model of its own
    if "Kernels are not available" not in str(err):
        raise
    print("Transformers refuses its own models", file=sys.stderr)
print(json.dumps({"attempts": attempts, "backends": [internimage_hf.dcnv3_backend(m) for m in loaded]}))
"""


@pytest.mark.parametrize("use_hub_kernels", [None, "0"])
def test_loading_is_quiet_and_offline(tmp_path, use_hub_kernels):
    """Transformers >= 5.25 kernelizes every from_pretrained by default: no kernel log line, no network, PyTorch
    modules (with `kernels` absent, as in the minimal environment, too)."""
    from transformers.utils.import_utils import is_kernels_available

    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "USE_HUB_KERNELS")
    }
    env = {**env, **({"USE_HUB_KERNELS": use_hub_kernels} if use_hub_kernels else {}), "PYTHONPATH": str(SRC_DIR)}
    env.pop(hub_kernels.KERNEL_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-c", _QUIET_SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    heads_refused = "Transformers refuses its own models" in proc.stderr
    assert result == {"attempts": [], "backends": ["pytorch"] * (3 if heads_refused else 4)}
    assert not heads_refused or not is_kernels_available()
    after_saving = proc.stderr.split("LOADING", 1)[1] + proc.stdout.split("LOADING", 1)[1]
    after_saving = after_saving.replace("Transformers refuses its own models", "")
    assert "kernel" not in after_saving.lower(), after_saving[-3000:]


def test_head_models_run_the_registered_kernel(tmp_path, kernels_module, clean_env, cpu_kernel_build):
    """A Transformers head around the backbone kernelizes through the global mapping once it is registered."""
    from transformers import UperNetConfig, UperNetForSemanticSegmentation
    from transformers.utils.import_utils import is_kernels_available

    if not is_kernels_available():
        pytest.skip("this transformers release does not accept the installed kernels for use_kernels=True")
    backbone = InternImageConfig(channels=16, depths=(1, 1, 2, 1), groups=(2, 2, 4, 4), out_indices=[1, 2, 3, 4])
    config = UperNetConfig(backbone_config=backbone, num_labels=3)
    UperNetForSemanticSegmentation(config).save_pretrained(tmp_path / "upernet")
    with kernels_module.use_kernel_mapping({}):  # a copy of the global mapping, dropped on exit
        hub_kernels.register_dcnv3_kernel_mapping(local_path=cpu_kernel_build.root)
        model = UperNetForSemanticSegmentation.from_pretrained(tmp_path / "upernet", use_kernels=True)
    plain = UperNetForSemanticSegmentation.from_pretrained(tmp_path / "upernet")
    assert hub_kernels.dcnv3_backend(model).startswith("kernel:" + cpu_kernel_build.ops_name)
    assert hub_kernels.dcnv3_backend(plain) == "pytorch"
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels).logits, plain(pixels).logits, atol=1e-4, rtol=0)


def test_use_kernels_on_a_dino_detector(tmp_path, kernels_module, clean_env, cpu_kernel_build):
    """The DINO detector follows the same switch: its backbone runs the kernel `kernelize` picks."""
    from internimage_hf import DinoDetrConfig, DinoDetrForObjectDetection

    backbone = InternImageConfig(
        channels=16, depths=[1, 1, 2, 1], groups=[1, 2, 4, 8], out_features=["stage2", "stage3", "stage4"]
    )
    torch.manual_seed(0)
    config = DinoDetrConfig(
        backbone_config=backbone, num_queries=30, d_model=32, neck_norm_groups=8, encoder_ffn_dim=64, decoder_ffn_dim=64
    )
    DinoDetrForObjectDetection(config).save_pretrained(tmp_path / "dino")
    clean_env.setenv(hub_kernels.KERNEL_ENV, str(cpu_kernel_build.root))
    via_transformers = DinoDetrForObjectDetection.from_pretrained(tmp_path / "dino", use_kernels=True).eval()
    plain = DinoDetrForObjectDetection.from_pretrained(tmp_path / "dino").eval()
    assert via_transformers.use_kernels and not plain.use_kernels
    assert hub_kernels.dcnv3_backend(via_transformers) == _variant(cpu_kernel_build)
    assert hub_kernels.dcnv3_backend(plain) == "pytorch"
    pixels = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        produced, expected = via_transformers(pixels), plain(pixels)
    torch.testing.assert_close(produced.pred_boxes, expected.pred_boxes, atol=1e-4, rtol=0)
    via_transformers.set_use_kernels(False)
    assert not via_transformers.use_kernels and hub_kernels.dcnv3_backend(via_transformers) == "pytorch"

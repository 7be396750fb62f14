"""Kernel trust: the default hub kernel is the commit pinned in the package; remote code is trusted only for
that commit or when the caller says so; scripts/publish_kernel.py writes the pin."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from dcnv3_test_inputs import dcnv3_params, make_inputs, reference_core
from tiny_dcnv3_module import TinyDCNv3

from internimage_hf import hub_kernels
from internimage_hf.hub_kernels import pin as kernel_pin

REPO = Path(__file__).resolve().parents[2]
PINNED = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def write_pin(path: Path, commit: str | None, **overrides) -> Path:
    data = {"repo_id": hub_kernels.DCNV3_KERNEL_REPO_ID, "version": 1, "commit": commit, **overrides}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def pinned(clean_env, tmp_path):
    clean_env.setattr(kernel_pin, "PIN_PATH", write_pin(tmp_path / "pin.json", PINNED))
    return clean_env


@pytest.fixture
def unpinned(clean_env, tmp_path):
    clean_env.setattr(kernel_pin, "PIN_PATH", write_pin(tmp_path / "pin.json", None))
    return clean_env


# --------------------------------------------------------------------------------------------------
# the pin file
# --------------------------------------------------------------------------------------------------


def test_shipped_pin_names_the_default_repo():
    pin = kernel_pin.read_kernel_pin()
    assert kernel_pin.PIN_PATH.parent == Path(hub_kernels.__file__).parent  # shipped as package data
    assert (pin.repo_id, pin.version) == (hub_kernels.DCNV3_KERNEL_REPO_ID, hub_kernels.DCNV3_KERNEL_VERSION)
    assert pin.commit is None or kernel_pin.is_commit_id(pin.commit)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"commit": "v1"}, "`commit` must be a full 40-hex-digit commit id"),
        ({"commit": PINNED.upper()}, "`commit` must be a full 40-hex-digit commit id"),
        ({"commit": PINNED[:12]}, "`commit` must be a full 40-hex-digit commit id"),
        ({"version": "1"}, "`version` must be a positive integer"),
        ({"repo_id": "dcnv3"}, "`repo_id` must look like 'org/name'"),
        ({"extra": 1}, "must be a JSON object with keys"),
    ],
)
def test_malformed_pin_is_refused(tmp_path, content, message):
    path = write_pin(tmp_path / "pin.json", **{"commit": None, **content})
    with pytest.raises(kernel_pin.KernelPinError, match=message) as info:
        kernel_pin.read_kernel_pin(path)
    assert str(path) in str(info.value)


def test_unreadable_pin_is_refused(tmp_path):
    (tmp_path / "pin.json").write_text("{not json")
    with pytest.raises(kernel_pin.KernelPinError, match="cannot read the DCNv3 kernel pin"):
        kernel_pin.read_kernel_pin(tmp_path / "pin.json")
    with pytest.raises(kernel_pin.KernelPinError, match="cannot read"):
        kernel_pin.read_kernel_pin(tmp_path / "missing.json")


def test_write_pin_round_trip(tmp_path):
    pin = kernel_pin.KernelPin("me/dcnv3", 2, OTHER)
    path = kernel_pin.write_kernel_pin(pin, tmp_path / "pin.json")
    assert kernel_pin.read_kernel_pin(path) == pin
    assert [p.name for p in tmp_path.iterdir()] == ["pin.json"]  # no scratch file left behind
    with pytest.raises(kernel_pin.KernelPinError, match="without a commit"):
        kernel_pin.write_kernel_pin(kernel_pin.KernelPin("me/dcnv3", 2), tmp_path / "pin.json")


# --------------------------------------------------------------------------------------------------
# selection and trust rules (no kernels needed)
# --------------------------------------------------------------------------------------------------


def test_default_is_the_pinned_commit_and_only_it_is_trusted(pinned):
    resolve = hub_kernels.resolve_kernel_source
    default = resolve()
    assert (default.repo_id, default.revision, default.version) == ("internimage-hf/dcnv3", PINNED, None)
    assert default.trust_remote_code is True
    assert resolve(repo_id="internimage-hf/dcnv3") == default
    assert resolve(revision=PINNED).trust_remote_code is True
    # Anything that can move, or another repo, is trusted only when the caller says so.
    assert resolve(version=1).trust_remote_code is False
    assert resolve(revision="main").trust_remote_code is False
    assert resolve(revision=OTHER).trust_remote_code is False
    assert resolve(repo_id="someone/dcnv3", revision=PINNED).trust_remote_code is False
    assert resolve(repo_id="someone/dcnv3").trust_remote_code is False
    assert resolve(repo_id="someone/dcnv3", trust_remote_code=True).trust_remote_code is True
    assert resolve(repo_id="someone/dcnv3", trust_remote_code=["someone/dcnv3"]).trust_remote_code == ["someone/dcnv3"]
    pinned.setenv(hub_kernels.KERNEL_ENV, "someone/dcnv3")
    assert resolve().trust_remote_code is False  # an environment variable is not the caller trusting code
    pinned.delenv(hub_kernels.KERNEL_ENV)
    pinned.setenv(hub_kernels.REVISION_ENV, "v1")
    assert resolve().describe() == "hub:internimage-hf/dcnv3@v1" and resolve().trust_remote_code is False


def test_unpinned_default_is_refused(unpinned):
    with pytest.raises(kernel_pin.KernelPinError, match="has no pinned commit") as info:
        hub_kernels.resolve_kernel_source()
    assert "local_path=" in str(info.value) and "trust_remote_code=True" in str(info.value)
    with pytest.raises(kernel_pin.KernelPinError):
        hub_kernels.resolve_kernel_source(repo_id=hub_kernels.DCNV3_KERNEL_REPO_ID)
    # An explicit choice still works while unpinned, untrusted unless the caller says so.
    chosen = hub_kernels.resolve_kernel_source(revision=OTHER, trust_remote_code=True)
    assert (chosen.revision, chosen.trust_remote_code) == (OTHER, True)


# --------------------------------------------------------------------------------------------------
# what kernelize hands to kernels
# --------------------------------------------------------------------------------------------------


class RecordingRepository:
    """Stands in for ``kernels.LayerRepository``: records its arguments; loading fails like a missing variant."""

    calls: list[dict] = []

    def __init__(self, repo_id, **kwargs):
        self.layer_name = kwargs["layer_name"]
        RecordingRepository.calls.append({"repo_id": repo_id, **kwargs})

    def load(self):
        raise FileNotFoundError("recorded only")


@pytest.fixture
def recorded(kernels_module, monkeypatch):
    RecordingRepository.calls = []
    monkeypatch.setattr(kernels_module, "LayerRepository", RecordingRepository)
    return RecordingRepository.calls


def _kernelize(**kwargs):
    module = TinyDCNv3(dcnv3_params()).eval()
    hub_kernels.kernelize(module, device="cpu", **kwargs)
    return module


def test_kernelize_passes_trust_only_for_the_pinned_commit(pinned, recorded):
    _kernelize()
    assert recorded and all(
        (c["repo_id"], c["revision"], c["version"], c["trust_remote_code"])
        == ("internimage-hf/dcnv3", PINNED, None, True)
        for c in recorded
    )
    for kwargs in ({"version": 1}, {"revision": "main"}, {"repo_id": "someone/dcnv3"}):
        recorded.clear()
        _kernelize(**kwargs)
        assert recorded and all(c["trust_remote_code"] is False for c in recorded), kwargs
    recorded.clear()
    _kernelize(repo_id="someone/dcnv3", revision=OTHER, trust_remote_code=True)
    assert recorded and all(c["trust_remote_code"] is True and c["revision"] == OTHER for c in recorded)


def test_kernelize_refuses_the_unpinned_default(unpinned, recorded, caplog):
    with caplog.at_level(logging.WARNING, logger=hub_kernels.__name__):
        module = _kernelize()
    assert recorded == []  # nothing was handed to kernels, so nothing was downloaded or run
    assert hub_kernels.dcnv3_backend(module) == "pytorch"
    (message,) = [r.getMessage() for r in caplog.records]
    assert "has no pinned commit" in message and "running the PyTorch implementation" in message
    params = dcnv3_params()
    value, offset, mask = make_inputs(params, mask_logits=True)
    assert (module(value, offset, mask) - reference_core(value, offset, mask, params)).abs().max() < 1e-6
    with pytest.raises(kernel_pin.KernelPinError, match="has no pinned commit"):
        hub_kernels.register_dcnv3_kernel_mapping()


# --------------------------------------------------------------------------------------------------
# scripts/publish_kernel.py writes the pin
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def publish():
    spec = importlib.util.spec_from_file_location("publish_kernel_under_test", REPO / "scripts" / "publish_kernel.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class FakeHfApi:
    """Records hub calls; the upload lands as commit ``OTHER``; revision ``v1`` resolves to ``PINNED``."""

    calls: list[tuple] = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return SimpleNamespace(oid=OTHER)

    def repo_info(self, repo_id, **kwargs):
        self.calls.append(("repo_info", repo_id, kwargs))
        return SimpleNamespace(sha={"v1": PINNED}.get(kwargs["revision"], kwargs["revision"]))


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi.calls


@pytest.fixture
def build_dir(tmp_path):
    variant = tmp_path / "kernel_build" / "build" / "torch214-cxx11-cpu-x86_64-linux"
    variant.mkdir(parents=True)
    (variant / "metadata.json").write_text(json.dumps({"version": 1}))
    return tmp_path / "kernel_build"


def test_publish_uploads_and_pins_the_commit(publish, fake_hub, build_dir, tmp_path, capsys, clean_env):
    pin_file = write_pin(tmp_path / "pin.json", None)
    assert publish.main([str(build_dir), "--repo-id", "me/dcnv3", "--pin-file", str(pin_file)]) == 0
    upload = next(kwargs for name, _, kwargs in fake_hub if name == "upload_folder")
    assert upload["revision"] == "v1" and upload["repo_type"] == "kernel"
    assert kernel_pin.read_kernel_pin(pin_file) == kernel_pin.KernelPin("me/dcnv3", 1, OTHER)
    out = capsys.readouterr().out
    assert f"pinned me/dcnv3@{OTHER} (v1) in {pin_file}" in out
    assert f'kernelize(model, repo_id="me/dcnv3", revision="{OTHER}", trust_remote_code=True)' in out
    # The package now trusts exactly that commit by default.
    clean_env.setattr(kernel_pin, "PIN_PATH", pin_file)
    default = hub_kernels.resolve_kernel_source()
    assert (default.repo_id, default.revision, default.trust_remote_code) == ("me/dcnv3", OTHER, True)


def test_publish_dry_run_and_no_pin_leave_the_pin_alone(publish, fake_hub, build_dir, tmp_path, capsys):
    pin_file = write_pin(tmp_path / "pin.json", None)
    before = pin_file.read_text()
    assert publish.main([str(build_dir), "--repo-id", "me/dcnv3", "--pin-file", str(pin_file), "--dry-run"]) == 0
    assert fake_hub == [] and "nothing uploaded" in capsys.readouterr().out
    assert publish.main([str(build_dir), "--repo-id", "me/dcnv3", "--pin-file", str(pin_file), "--no-pin"]) == 0
    assert pin_file.read_text() == before
    assert f"--repo-id me/dcnv3 --pin-revision {OTHER}" in capsys.readouterr().out


def test_publish_pins_an_existing_revision(publish, fake_hub, tmp_path, capsys):
    pin_file = write_pin(tmp_path / "pin.json", None)
    args = ["--repo-id", "internimage-hf/dcnv3", "--pin-revision", "v1", "--pin-file", str(pin_file)]
    assert publish.main(args) == 0
    assert [name for name, *_ in fake_hub] == ["repo_info"]  # nothing uploaded
    assert kernel_pin.read_kernel_pin(pin_file).commit == PINNED  # the branch, resolved to its commit
    assert f"pinned internimage-hf/dcnv3@{PINNED}" in capsys.readouterr().out


def test_publish_argument_errors(publish, build_dir, capsys):
    for argv, message in (
        ([str(build_dir), "--repo-id", "a/b", "--pin-revision", "v1"], "not both"),
        (["--repo-id", "a/b"], "pass BUILD_DIR"),
        (["--repo-id", "a/b", "--pin-revision", "v1", "--dry-run"], "do not apply"),
    ):
        with pytest.raises(SystemExit) as info:
            publish.main(argv)
        assert info.value.code == 2 and message in capsys.readouterr().err


def test_kernel_config_follows_the_same_trust_rules(pinned, recorded):
    kernel_config = pytest.importorskip("transformers").KernelConfig
    module = TinyDCNv3(dcnv3_params()).eval()
    hub_kernels.set_model_kernels(module, True, kernel_config({"DCNv3Core": "internimage-hf/dcnv3:DCNv3Core"}))
    assert recorded and all(
        (c["revision"], c["version"], c["trust_remote_code"]) == (PINNED, None, True) for c in recorded
    )
    recorded.clear()
    other = kernel_config({"DCNv3Core": ("internimage-hf/dcnv3:DCNv3Core", {"revision": OTHER})})
    hub_kernels.set_model_kernels(module, True, other)
    assert recorded and all((c["revision"], c["trust_remote_code"]) == (OTHER, False) for c in recorded)

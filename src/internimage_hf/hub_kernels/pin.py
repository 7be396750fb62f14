"""The hub commit of the DCNv3 kernel that this release of the package trusts (``dcnv3_kernel_pin.json``).

A hub branch such as ``v1`` moves whenever someone pushes to it; a commit id does not (it is the hash of the
content). The package therefore ships the one commit its maintainers published and checked, and only that
commit is loaded without the caller opting in to remote code (see `internimage_hf.hub_kernels.source`).

The pin file is JSON with three keys::

    {"repo_id": "internimage-hf/dcnv3", "version": 1, "commit": "<40 hex digits>" or null}

``version`` is the kernel API version (hub branch ``v<version>``) the commit was published to; ``commit: null``
means no kernel has been published for this release, and the hub default is refused. ``scripts/publish_kernel.py``
writes the file after an upload (or for an existing commit with ``--pin-revision``).

Why not the ``kernels`` lock file (``kernels lock`` / ``load_kernel(lockfile=...)``): in ``kernels`` 0.17.2 a lock
entry holds the commit only (no per-variant hashes), so it pins nothing more than a commit id does, while its
format has changed between ``kernels`` releases and it is only found through installed package metadata. A
commit passed as ``revision=`` works with every ``kernels`` release and without ``kernels`` installed.

Only the standard library is imported, so the publishing script can use this module cheaply.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

PIN_PATH = Path(__file__).with_name("dcnv3_kernel_pin.json")

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class KernelPinError(RuntimeError):
    """The pin file is unreadable or malformed, or the hub default was requested while no commit is pinned."""


@dataclasses.dataclass(frozen=True)
class KernelPin:
    """A hub kernel repo and the immutable commit of it that the package trusts (``commit`` None: unpinned)."""

    repo_id: str
    version: int
    commit: str | None = None

    def __post_init__(self):
        if not isinstance(self.repo_id, str) or self.repo_id.count("/") != 1 or not all(self.repo_id.split("/")):
            raise KernelPinError(f"kernel pin: `repo_id` must look like 'org/name', got {self.repo_id!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise KernelPinError(f"kernel pin: `version` must be a positive integer, got {self.version!r}")
        if self.commit is not None and not is_commit_id(self.commit):
            raise KernelPinError(
                f"kernel pin: `commit` must be a full 40-hex-digit commit id (branches and tags move), "
                f"got {self.commit!r}"
            )

    def describe(self) -> str:
        """``"<repo>@<commit>"``, or ``"<repo> (no commit pinned)"``."""
        return f"{self.repo_id}@{self.commit}" if self.commit else f"{self.repo_id} (no commit pinned)"


def is_commit_id(revision: str | None) -> bool:
    """Whether ``revision`` is a full lowercase git commit id, the only hub revision that cannot move."""
    return isinstance(revision, str) and _COMMIT_RE.match(revision) is not None


def read_kernel_pin(path: str | os.PathLike | None = None) -> KernelPin:
    """Read and validate the pin file (default: the one shipped with the package, `PIN_PATH`).

    Raises:
        KernelPinError: the file is missing, not JSON, or has a missing, unknown or invalid field.
    """
    path = Path(path) if path is not None else PIN_PATH
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise KernelPinError(f"cannot read the DCNv3 kernel pin {path}: {err}") from err
    fields = {field.name for field in dataclasses.fields(KernelPin)}
    if not isinstance(data, dict) or set(data) != fields:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise KernelPinError(f"the DCNv3 kernel pin {path} must be a JSON object with keys {sorted(fields)}: {keys}")
    try:
        return KernelPin(**data)
    except KernelPinError as err:
        raise KernelPinError(f"{path}: {err}") from None


def write_kernel_pin(pin: KernelPin, path: str | os.PathLike | None = None) -> Path:
    """Write ``pin`` (default place: `PIN_PATH`, inside the source tree) atomically; returns the path."""
    if pin.commit is None:
        raise KernelPinError("refusing to write a kernel pin without a commit")
    path = Path(path) if path is not None else PIN_PATH
    scratch = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    scratch.write_text(json.dumps(dataclasses.asdict(pin), indent=2) + "\n")
    os.replace(scratch, path)
    return path


__all__ = ["PIN_PATH", "KernelPin", "KernelPinError", "is_commit_id", "read_kernel_pin", "write_kernel_pin"]

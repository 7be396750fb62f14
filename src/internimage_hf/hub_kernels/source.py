"""Which DCNv3 kernel to load, and whether its code is trusted without asking: pure rules, no network.

Selection, highest priority first:

1. ``local_path=``: a local kernel repo, its ``build/`` dir or one variant dir (see `internimage_hf.hub_kernels.local`);
2. ``repo_id=`` (a hub id ``org/name``) with ``revision=`` (branch, tag or commit) or ``version=`` (branch
   ``v<version>``);
3. the environment: ``INTERNIMAGE_DCNV3_KERNEL`` is a local path when it starts with ``/``, ``.`` or ``~``, else it
   must be a hub id (an existing ``./org/name`` folder does not turn ``org/name`` into a path);
   ``INTERNIMAGE_DCNV3_KERNEL_REVISION`` pins a hub revision when neither ``revision`` nor ``version`` is passed;
4. the default: the pinned commit of `internimage_hf.hub_kernels.pin` (refused with `KernelPinError` while unpinned).

Trust: the ``kernels`` library only loads hub code from publishers the Hub flags as trusted unless
``trust_remote_code`` is set. It is set for the pinned ``(repo, commit)`` pair shipped with the package, and
otherwise only when the caller passes ``trust_remote_code=True`` (or a list of allowed repo ids).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .pin import PIN_PATH, KernelPinError, read_kernel_pin

DCNV3_KERNEL_REPO_ID = "internimage-hf/dcnv3"
# Kernel API version this package calls (hub branch ``v1``): used for a caller's repo named without a revision.
DCNV3_KERNEL_VERSION = 1
KERNEL_ENV = "INTERNIMAGE_DCNV3_KERNEL"
REVISION_ENV = "INTERNIMAGE_DCNV3_KERNEL_REVISION"
_PATH_PREFIXES = ("/", ".", "~")


@dataclasses.dataclass(frozen=True)
class KernelSource:
    """Where the DCNv3 kernel comes from: a hub repo (``revision`` or ``version``) or a local directory."""

    repo_id: str | None = None
    revision: str | None = None
    version: int | None = None
    local_path: Path | None = None
    trust_remote_code: bool | list[str] = False

    def describe(self) -> str:
        """``"local:<path>"``, ``"hub:<repo>@v<version>"`` or ``"hub:<repo>@<revision>"``."""
        if self.local_path is not None:
            return f"local:{self.local_path}"
        pin = f"v{self.version}" if self.version is not None else self.revision
        return f"hub:{self.repo_id}@{pin}"


def is_local_path(value: str) -> bool:
    """Whether a kernel location names a local directory: it starts with ``/``, ``.`` or ``~`` (or is absolute)."""
    return value.startswith(_PATH_PREFIXES) or os.path.isabs(value)


def _hub_repo_id(value: str, name: str) -> str:
    """``value`` if it is a hub repo id ``org/name``; else a `ValueError` naming the argument ``name``."""
    try:
        validate_repo_id(value)
    except HFValidationError:
        pass
    else:
        if value.count("/") == 1:
            return value
    raise ValueError(
        f"{name}={value!r} is not a hub kernel repo id ('org/name'); a local kernel directory is passed as "
        f"`local_path=` or as {KERNEL_ENV} starting with '/', './' or '~'"
    )


def _unpinned_message(repo_id: str) -> str:
    return (
        f"the default DCNv3 hub kernel {repo_id} has no pinned commit in this release of internimage_hf "
        f"({PIN_PATH.name} says commit: null), so it is not downloaded. Use a kernel you built "
        "(`local_path=`, see scripts/build_kernel.py), or name one you reviewed with `repo_id=`, `revision=<commit>` "
        "and `trust_remote_code=True`; maintainers pin a published kernel with scripts/publish_kernel.py"
    )


def resolve_kernel_source(
    repo_id: str | None = None,
    revision: str | None = None,
    version: int | None = None,
    local_path: str | os.PathLike | None = None,
    trust_remote_code: bool | list[str] = False,
) -> KernelSource:
    """Apply the selection and trust rules of this module (reads the shipped pin file; nothing else).

    Raises:
        ValueError: both ``revision`` and ``version``, or a hub id that is not ``org/name`` (argument or
            environment variable named).
        KernelPinError: the pinned default is selected but this release pins no commit, or the pin file is broken.
    """
    if revision is not None and version is not None:
        raise ValueError("pass either `revision` or `version` for the DCNv3 kernel, not both")
    if local_path is not None:
        return KernelSource(local_path=Path(local_path).expanduser())
    if repo_id is not None:
        repo_id = _hub_repo_id(repo_id, "repo_id")
    else:
        env = os.environ.get(KERNEL_ENV, "").strip()
        if env and is_local_path(env):
            return KernelSource(local_path=Path(env).expanduser())
        repo_id = _hub_repo_id(env, KERNEL_ENV) if env else None
    if revision is None and version is None:
        revision = os.environ.get(REVISION_ENV, "").strip() or None

    pin = read_kernel_pin()
    repo_id = repo_id or pin.repo_id
    if repo_id == pin.repo_id and revision is None and version is None:
        if pin.commit is None:
            raise KernelPinError(_unpinned_message(repo_id))
        revision = pin.commit
    elif revision is None and version is None:
        version = DCNV3_KERNEL_VERSION
    pinned = repo_id == pin.repo_id and pin.commit is not None and revision == pin.commit
    return KernelSource(
        repo_id=repo_id, revision=revision, version=version, trust_remote_code=True if pinned else trust_remote_code
    )


__all__ = [
    "DCNV3_KERNEL_REPO_ID",
    "DCNV3_KERNEL_VERSION",
    "KERNEL_ENV",
    "REVISION_ENV",
    "KernelSource",
    "is_local_path",
    "resolve_kernel_source",
]

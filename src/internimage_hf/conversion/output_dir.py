"""The output directory of a conversion, handled so that the converter never deletes what it did not write.

A conversion is written into a staging directory beside the output (``.NAME.tmp-XXXXXXXX``) and renamed into place
once complete, so a failure never leaves a half-written output. With ``overwrite`` the existing output must be a
previous conversion (only the files a conversion writes): it is moved aside (``.NAME.old-XXXXXXXX``) and its files
are deleted only after the new output is in place. A lock file beside the output (``.NAME.lock``, from the
`filelock` package; the operating system releases it when a process dies) keeps a second conversion out of the
same output, and lets the holder treat every staging directory it finds as left by a run that was killed: those
are cleaned up, and an output such a run had moved aside is put back.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from safetensors import SafetensorError

from .errors import ConversionError

# What `save_pretrained` (model and image processor) and the model card write; large models may be sharded.
CONVERTED_FILES = frozenset(
    {"config.json", "model.safetensors", "model.safetensors.index.json", "preprocessor_config.json", "README.md"}
)
_WEIGHT_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_CONVERTED_MODEL_TYPES = ("internimage", "upernet")


def is_converted_file(path: Path) -> bool:
    """A regular file (not a link) named like one a conversion writes, or remote code the converter generated."""
    from ..hub.remote_code import is_generated_file  # imports the model code, which only this check needs

    name_matches = path.name in CONVERTED_FILES or _WEIGHT_SHARD.fullmatch(path.name) is not None
    return (name_matches or is_generated_file(path)) and not path.is_symlink() and path.is_file()


def _holds_converted_config(directory: Path) -> bool:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") in _CONVERTED_MODEL_TYPES


def _refuse_symlink(path: Path) -> None:
    if path.is_symlink():
        raise ConversionError(
            f"{path} is a symbolic link (to {os.readlink(path)}); the converter does not write or replace through "
            "links: pass the directory it points to, or another path"
        )


def check_replaceable(output: Path) -> None:
    """Raise unless `output` is an empty directory or a previous conversion holding nothing else."""
    _refuse_symlink(output)
    if not output.is_dir():
        raise ConversionError(
            f"{output} exists and is not a directory; --overwrite only replaces a previous conversion"
        )
    foreign = sorted(p.name for p in output.iterdir() if not is_converted_file(p))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConversionError(
            f"--overwrite only replaces a previous conversion, but {output} also holds {shown}; "
            "move those away or choose another output directory"
        )
    if any(output.iterdir()) and not _holds_converted_config(output):
        raise ConversionError(
            f"{output} is not a previous conversion (its config.json is missing or not an InternImage/UperNet config); "
            "--overwrite does not replace it"
        )


def remove_converted_dir(directory: Path, log: Callable[[str], None]) -> bool:
    """Delete `directory` if it holds nothing but files a conversion writes; returns whether it is gone.

    A directory holding anything else is left untouched, and `log` says so.
    """
    try:
        entries = list(directory.iterdir())
        foreign = [entry.name for entry in entries if not is_converted_file(entry)]
        if foreign:
            log(f"left {directory} in place: it also holds {', '.join(sorted(foreign)[:5])}")
            return False
        for entry in entries:
            entry.unlink()
        directory.rmdir()
    except OSError as error:
        log(f"left {directory} in place: {error.strerror or error}")
        return False
    return True


def apply_umask_to_files(directory: Path) -> None:
    """Give every file in `directory` the mode a new file gets under the umask (safetensors writes 0o600).

    `directory` was created by `mkdir` with the default 0o777 minus the umask, so its mode without the execute bits
    is that file mode, read without changing the process umask (which is not thread-safe).
    """
    file_mode = stat.S_IMODE(directory.stat().st_mode) & 0o666
    for entry in directory.iterdir():
        entry.chmod(file_mode)


@contextmanager
def write_errors_as_conversion_errors(output: Path) -> Iterator[None]:
    """Turn a failed write (read-only target, full disk, no permission) into a one-line `ConversionError`."""
    try:
        yield
    except SafetensorError as error:  # safetensors writes in Rust and reports I/O errors as its own type
        raise ConversionError(f"cannot write {output}: {error}") from error
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        raise ConversionError(f"cannot write {output}: {error.strerror or error}{where}") from error


class OutputDirectory:
    """The directory a conversion goes to; use as a context manager around everything after argument checks.

    Entering creates the parent, takes the lock, cleans up after killed runs and checks that an existing output
    may be replaced; `staging()` gives the directory to write into and `publish()` moves it into place.
    """

    def __init__(self, output_dir: str | os.PathLike, source: str | os.PathLike, *, overwrite: bool, log=print):
        path = Path(os.path.abspath(output_dir))
        if not path.name:
            raise ConversionError(f"{output_dir!r} cannot be an output directory")
        _refuse_symlink(path)
        # The parent may go through links (that is where the user keeps their files); the output itself may not.
        self.path = path.parent.resolve() / path.name
        source_path = Path(source).resolve()
        if source_path == self.path or self.path in source_path.parents:
            raise ConversionError(f"{self.path} holds the source {source}; choose an output directory outside it")
        self.overwrite = overwrite
        self.log = log
        self._lock = FileLock(self.path.parent / f".{self.path.name}.lock", timeout=0)

    def __enter__(self) -> OutputDirectory:
        with write_errors_as_conversion_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._lock.acquire()
            except Timeout as error:
                raise ConversionError(
                    f"another conversion into {self.path} is running (it holds {self._lock.lock_file})"
                ) from error
            try:
                self._recover_interrupted_runs()
                self._check_existing()
            except BaseException:
                self._lock.release()
                raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._lock.release()

    def _leftovers(self, kind: str) -> list[Path]:
        pattern = f".{glob.escape(self.path.name)}.{kind}-*"
        return sorted(p for p in self.path.parent.glob(pattern) if p.is_dir() and not p.is_symlink())

    def _recover_interrupted_runs(self) -> None:
        """Only a run that died leaves staging directories behind while nobody holds the lock."""
        for old in self._leftovers("old"):
            if not os.path.lexists(self.path):  # killed between moving the old output aside and the new one in
                old.rename(self.path)
                self.log(f"restored {self.path} from {old.name}, moved aside by an interrupted conversion")
            elif remove_converted_dir(old, self.log):
                self.log(f"removed {old.name}, left by an interrupted conversion")
        for staging in self._leftovers("tmp"):
            if remove_converted_dir(staging, self.log):
                self.log(f"removed {staging.name}, left by an interrupted conversion")

    def _check_existing(self) -> None:
        if not os.path.lexists(self.path):
            return
        if not self.overwrite:
            raise ConversionError(f"{self.path} already exists (pass --overwrite to replace a previous conversion)")
        check_replaceable(self.path)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """An empty directory beside the output to write into; removed again unless `publish` moved it."""
        # `mkdir` applies the umask (0o755 with the usual 022), unlike `tempfile.mkdtemp`'s private 0o700.
        staging = self.path.parent / f".{self.path.name}.tmp-{secrets.token_hex(4)}"
        with write_errors_as_conversion_errors(self.path):
            staging.mkdir()
        try:
            with write_errors_as_conversion_errors(self.path):
                yield staging
        finally:
            if staging.exists():
                remove_converted_dir(staging, self.log)

    def publish(self, staging: Path) -> None:
        """Rename the finished `staging` directory to the output, replacing a previous conversion."""
        with write_errors_as_conversion_errors(self.path):
            apply_umask_to_files(staging)
            if not os.path.lexists(self.path):
                staging.rename(self.path)
                return
            self._check_existing()  # again: the output may have changed while the conversion ran
            backup = self.path.parent / f".{self.path.name}.old-{secrets.token_hex(4)}"
            self.path.rename(backup)
            staging.rename(self.path)
        remove_converted_dir(backup, self.log)


__all__ = ["CONVERTED_FILES", "OutputDirectory", "check_replaceable", "is_converted_file"]

"""The converter's output directory (`internimage_hf.conversion.output_dir`): it never deletes what it did not write.

`--overwrite` replaces only a previous conversion, never the source or a symlink's target; runs killed with
SIGKILL are cleaned up (and a previous output they had moved aside is put back); directories get the umask's
permissions; failed writes are one-line errors with exit code 2.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from internimage_hf.conversion.cli import main

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "convert_checkpoint.py"
CONVERTED = ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]


@pytest.fixture
def checkpoint(golden_cases, tmp_path) -> tuple[Path, Path]:
    """A tiny official classification checkpoint and its official-style config.json."""
    golden = golden_cases["tiny_t"]
    path = tmp_path / "ckpt.pth"
    torch.save({"model": golden.state_dict}, path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(golden.model_kwargs))
    return path, config


def convert(checkpoint, output, capsys, *extra) -> tuple[int, str, str]:
    """Run the command line; returns (exit code, stdout, stderr)."""
    path, config = checkpoint
    code = main([str(path), str(output), "--config", str(config), *map(str, extra)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (relative name -> bytes)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_overwrite_replaces_a_previous_conversion(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert convert(checkpoint, out, capsys, "--image_size", "64")[0] == 0
    code, _, err = convert(checkpoint, out, capsys, "--image_size", "96")
    assert code == 2 and "already exists" in err
    code, _, err = convert(checkpoint, out, capsys, "--image_size", "96", "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == CONVERTED
    assert json.loads((out / "preprocessor_config.json").read_text())["crop_size"] == {"height": 96, "width": 96}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "extra_files",
    [
        {"notes.txt": "mine"},  # a previous conversion plus a file of the user's
        {".git/HEAD": "ref: refs/heads/main\n"},  # a cloned repository
        {"README.md": "# my project\n"},  # only names a conversion writes, but no converted config.json
    ],
    ids=["extra-file", "subdirectory", "not-a-conversion"],
)
def test_overwrite_refuses_a_directory_holding_anything_else(extra_files, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    if "README.md" not in extra_files:
        assert convert(checkpoint, out, capsys)[0] == 0
    for name, text in extra_files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = snapshot(out)
    code, _, err = convert(checkpoint, out, capsys, "--overwrite")
    assert code == 2
    assert "--overwrite" in err and ("previous conversion" in err)
    assert snapshot(out) == before  # not one byte of the directory changed
    assert leftovers(tmp_path) == []


def test_output_holding_the_source_is_refused(golden_cases, tmp_path, capsys):
    """Converting an official hub directory onto itself, or into the folder holding a .pth, would delete it."""
    hub = golden_cases["tiny_t"].write_official_hub_dir(tmp_path / "hub")
    before = snapshot(hub)
    for output in (hub, tmp_path):
        code = main([str(hub), str(output), "--overwrite"])
        assert code == 2
        assert "holds the source" in capsys.readouterr().err
    assert snapshot(hub) == before

    folder = tmp_path / "converted"
    folder.mkdir()
    pth = folder / "ckpt.pth"
    torch.save({"model": golden_cases["tiny_t"].state_dict}, pth)
    assert main([str(pth), str(folder), "--preset", "t", "--overwrite"]) == 2
    assert "holds the source" in capsys.readouterr().err
    assert pth.exists() and leftovers(tmp_path) == []


def test_symlinked_output_is_refused(checkpoint, tmp_path, capsys):
    """The link's target (here a previous conversion) must not be replaced through the link."""
    target = tmp_path / "elsewhere"
    assert convert(checkpoint, target, capsys)[0] == 0
    before = snapshot(target)
    link = tmp_path / "out"
    link.symlink_to(target, target_is_directory=True)
    for extra in ((), ("--overwrite",)):
        code, _, err = convert(checkpoint, link, capsys, *extra)
        assert code == 2
        assert "symbolic link" in err and str(target) in err
    assert link.is_symlink() and snapshot(target) == before
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "missing")
    assert convert(checkpoint, dangling, capsys)[0] == 2
    assert not (tmp_path / "missing").exists() and leftovers(tmp_path) == []


KILLED_RUN = textwrap.dedent(
    """
    import os, pathlib, signal, sys
    import internimage_hf.conversion.pipeline as pipeline
    from internimage_hf.conversion.cli import main

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if sys.argv[1] == "while-writing":
        write_converted = pipeline.write_converted

        def write_then_die(staging, model, plan):
            write_converted(staging, model, plan)
            die()

        pipeline.write_converted = write_then_die
    else:  # "while-replacing": after the old output was moved aside, before the new one is moved in
        rename = pathlib.Path.rename

        def rename_or_die(self, target):
            if ".tmp-" in self.name:
                die()
            return rename(self, target)

        pathlib.Path.rename = rename_or_die
    main(sys.argv[2:])
    """
)


def run_killed(when: str, checkpoint, output: Path, *extra: str) -> None:
    path, config = checkpoint
    argv = [sys.executable, "-c", KILLED_RUN, when, str(path), str(output), "--config", str(config), *extra]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]


def test_killed_run_is_cleaned_up_by_the_next(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    run_killed("while-writing", checkpoint, out)
    assert not out.exists() and len(leftovers(tmp_path)) == 1  # the staging folder of the killed run
    code, stdout, err = convert(checkpoint, out, capsys)
    assert code == 0, err
    assert "left by an interrupted conversion" in stdout
    assert leftovers(tmp_path) == [] and sorted(p.name for p in out.iterdir()) == CONVERTED


def test_staging_like_folder_with_other_files_is_left_alone(checkpoint, tmp_path, capsys):
    """Only folders holding nothing but converted files are cleaned up, whatever their name."""
    foreign = tmp_path / ".out.tmp-mine"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    (foreign / "notes.txt").write_text("mine")
    code, stdout, err = convert(checkpoint, tmp_path / "out", capsys)
    assert code == 0, err
    assert f"left {foreign} in place: it also holds notes.txt" in stdout
    assert sorted(p.name for p in foreign.iterdir()) == ["config.json", "notes.txt"]


def test_output_moved_aside_by_a_killed_run_is_restored(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert convert(checkpoint, out, capsys, "--image_size", "64")[0] == 0
    previous = snapshot(out)
    run_killed("while-replacing", checkpoint, out, "--overwrite", "--image_size", "96")
    assert not out.exists() and sorted(name.split("-")[0] for name in leftovers(tmp_path)) == [".out.old", ".out.tmp"]
    code, stdout, err = convert(checkpoint, out, capsys, "--image_size", "96")
    assert code == 2 and "already exists" in err  # the previous conversion is back, so no --overwrite: refused
    assert "restored" in stdout
    assert snapshot(out) == previous and leftovers(tmp_path) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750)])
def test_output_permissions_follow_the_umask(umask, mode, checkpoint, tmp_path, capsys):
    old_umask = os.umask(umask)
    try:
        code, _, err = convert(checkpoint, tmp_path / "out", capsys)
    finally:
        os.umask(old_umask)
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == mode
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()} == {0o666 & ~umask}


def test_read_only_target_is_a_one_line_error(checkpoint, tmp_path, capsys, monkeypatch):
    """EROFS from the first directory the converter creates (root ignores chmod, so the error is injected)."""
    mkdir = os.mkdir

    def read_only_mkdir(path, *args, **kwargs):
        if Path(path).name.startswith(".out."):
            raise OSError(30, "Read-only file system", str(path))
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    code, _, err = convert(checkpoint, tmp_path / "out", capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: cannot write ") and "Read-only file system" in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


FULL_DISK_LIMIT = 256 * 1024  # bytes per written file: config.json fits, the 7 MB of weights do not


def limit_file_size():
    """In the child: writes past the limit fail with EFBIG, as on a full disk (instead of killing the process)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FULL_DISK_LIMIT, FULL_DISK_LIMIT))


def test_failed_weight_write_is_a_one_line_error_and_keeps_the_previous_output(checkpoint, tmp_path, capsys):
    """A real write failure inside safetensors (Rust), as when the disk fills up while writing the weights."""
    out = tmp_path / "out"
    assert convert(checkpoint, out, capsys)[0] == 0
    previous = snapshot(out)
    path, config = checkpoint
    argv = [sys.executable, str(SCRIPT), str(path), str(out), "--config", str(config)]
    result = subprocess.run(
        [*argv, "--overwrite", "--image_size", "96"], capture_output=True, text=True, timeout=300, check=False,
        preexec_fn=limit_file_size,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "cannot write" in error_lines[0] and "File too large" in error_lines[0]
    assert snapshot(out) == previous and leftovers(tmp_path) == []


def test_second_conversion_into_the_same_output_fails_at_once(checkpoint, tmp_path, capsys):
    with FileLock(tmp_path / ".out.lock"):  # what a running conversion into `out` holds
        code, _, err = convert(checkpoint, tmp_path / "out", capsys)
    assert code == 2 and "another conversion" in err
    assert not (tmp_path / "out").exists()

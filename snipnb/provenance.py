"""Which code made a result: every sweep record and every executed chapter carries this.

`code` is a hash of the library's own source files, so it changes exactly when the code that
computes results changes (not when a README or a notebook does); `commit` and `dirty` say where in
the history that code sits, for a reader who wants to check it out.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
import platform
import subprocess

import torch

from . import __version__, devices

PACKAGE = pathlib.Path(__file__).resolve().parent


def source_hash(package: pathlib.Path = PACKAGE) -> str:
    """16 hex digits of SHA-256 over the package's .py files (their paths and contents)."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _git(*args: str, where: pathlib.Path = PACKAGE) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# What makes a result, relative to the checkout's top: the library and the notebooks and scripts that
# run it. An executed chapter written into book/, or an edited README, changes no result.
RESULT_PATHS = ("snipnb", "notebooks", "scripts")


def changed(where: pathlib.Path = PACKAGE, paths=RESULT_PATHS) -> bool | None:
    """Whether tracked files under `paths` (relative to the top of the checkout `where` is in) differ
    from the commit; None outside a git checkout."""
    top = _git("rev-parse", "--show-toplevel", where=where)
    if top is None:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no", "--", *paths, where=pathlib.Path(top))
    return bool(status) if status is not None else None


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """(commit, whether the code that makes results differs from it: `changed`), or (None, None)
    outside a git checkout."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    return commit, changed()


def code_version() -> dict:
    """The code a run is made with: source hash, git commit and dirtiness, library and torch versions."""
    commit, dirty = git_state()
    return dict(code=source_hash(), commit=commit, dirty=dirty, snipnb=__version__, torch=torch.__version__)


def device_name(device=None) -> str:
    """A readable name of `device` (default: CUDA if present, else the CPU) and the precision the
    library uses there by default (`devices.autocast_enabled`): 'NVIDIA H100 80GB HBM3 (bf16 training
    and evaluation)', 'cpu (x86_64, 2 threads; bf16 evaluation)', 'cpu (x86_64, 2 threads; fp32)'."""
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    bf16 = [purpose for purpose in ("training", "evaluation") if devices.autocast_enabled(device, None, purpose)]
    precision = f"bf16 {' and '.join(bf16)}" if bf16 else "fp32"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({precision})"
    if device.type == "cpu":
        return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads; {precision})"
    return f"{device.type} ({precision})"


def precision_of(name: str | None) -> str | None:
    """The precision part of a `device_name` ('bf16 evaluation', 'bf16 training and evaluation',
    'fp32'), or None for a record that names no device. Runs that differ in it are different
    experiments (a CPU with native bf16 also pretrains its sources in bf16), not repeats."""
    if not name:
        return None
    return name.rsplit("(", 1)[-1].rstrip(")").rsplit("; ", 1)[-1]


def describe(device=None) -> str:
    """One line for the top of a chapter: commit, code hash, versions and device."""
    v = code_version()
    commit = (v["commit"] or "no git checkout")[:10] + (" (with uncommitted changes)" if v["dirty"] else "")
    return (f"commit `{commit}`, library code `{v['code']}`, snipnb {v['snipnb']}, torch {v['torch']}, "
            f"on {device_name(device)}")

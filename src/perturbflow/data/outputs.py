"""Writing results safely: atomic writes, output folders that never clobber user files, and a
lock so that two processes never write into the same run folder."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import pandas as pd

try:
    import fcntl
except ImportError:  # Windows: no flock; run folders are then not locked
    fcntl = None

logger = logging.getLogger(__name__)


class OutputExistsError(FileExistsError):
    """An output would replace an existing file or folder and ``overwrite`` was not given."""


class OutputLockedError(OutputExistsError):
    """Another process is writing into the same output folder."""


INCOMPLETE_MARKER = ".perturbflow-incomplete"
LOCK_FILE = ".perturbflow-lock"
# Run folders this process holds locked, with their open lock files. The kernel releases a flock
# when its process ends, so a run stopped by kill -9 never blocks its own rerun.
_HELD_LOCKS: dict[Path, int] = {}


def lock_output_dir(path: str | Path) -> Path:
    """Lock the existing folder ``path`` for this process until :func:`release_output_dir`,
    :func:`mark_complete` or the end of the process; raises :class:`OutputLockedError` when
    another process holds it. Locking a folder this process already holds is a no-op."""
    path = Path(path)
    key = path.resolve()
    if fcntl is None or key in _HELD_LOCKS:
        return path
    lock = path / LOCK_FILE
    for _ in range(10):
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            holder = _lock_holder(lock)
            raise OutputLockedError(
                f"{path} is being written by another perturbflow process{holder}; wait for it "
                "to finish or choose another --out"
            ) from None
        # The holder may have finished and removed the lock file between our open and flock:
        # then we locked a file nobody else will see; open the current one again.
        try:
            current = os.stat(lock).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle).st_ino:
            os.ftruncate(handle, 0)
            os.write(handle, f"{os.getpid()}\n".encode())
            _HELD_LOCKS[key] = handle
            return path
        os.close(handle)
    raise OutputLockedError(
        f"{path}: could not lock {LOCK_FILE}; another process keeps replacing it"
    )


def release_output_dir(path: str | Path) -> None:
    """Release this process's lock on ``path`` (if it holds one) and remove the lock file."""
    handle = _HELD_LOCKS.pop(Path(path).resolve(), None)
    if handle is not None:
        (Path(path) / LOCK_FILE).unlink(missing_ok=True)
        os.close(handle)


def _lock_holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _refuse_finished(path: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless ``overwrite`` or it holds a run that never completed."""
    if not path.exists() or overwrite or (path / INCOMPLETE_MARKER).exists():
        return
    if any(entry.name != LOCK_FILE for entry in path.iterdir()):
        raise OutputExistsError(
            f"{path} exists and is not empty; choose a new --out, pass --overwrite (files "
            "written by this run are replaced, others are kept) or, for a benchmark, --resume"
        )


def prepare_output_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Create a run folder, marked incomplete until :func:`mark_complete` is called.

    An existing non-empty folder needs ``overwrite=True``, unless it is a run folder that never
    completed (a run that failed or was stopped): its rerun may write there, so a failed run
    never blocks its own rerun. With ``overwrite`` the folder is kept and only the files this run
    writes are replaced; nothing else in it is deleted. The folder stays locked
    (:func:`lock_output_dir`) until :func:`mark_complete`: a second process given the same folder
    raises :class:`OutputLockedError` before writing anything.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is a file; choose another --out")
    _refuse_finished(path, overwrite)
    path.mkdir(parents=True, exist_ok=True)
    lock_output_dir(path)
    try:
        _refuse_finished(path, overwrite)  # a run holding the lock may have finished meanwhile
    except OutputExistsError:
        release_output_dir(path)
        raise
    (path / INCOMPLETE_MARKER).write_text("this run has not finished\n")
    return path


def mark_complete(path: str | Path) -> None:
    """Mark a run folder made by :func:`prepare_output_dir` as finished and release its lock."""
    (Path(path) / INCOMPLETE_MARKER).unlink(missing_ok=True)
    release_output_dir(path)


def write_atomic(path: str | Path, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Run ``write(temporary path)`` and rename the file into ``path``: a crash or a full disk
    never leaves half a file, and the previous ``path`` stays as it was until the new one is
    complete. Refuses to replace an existing ``path`` unless ``overwrite``, also when another
    process creates it while this one writes."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise _exists(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        publish(tmp, path, overwrite)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def publish(tmp: str | Path, path: Path, overwrite: bool) -> None:
    """Move the finished file ``tmp`` to ``path``. Without ``overwrite`` a hard link publishes it
    only if ``path`` still does not exist (atomic no-clobber); filesystems without hard links
    fall back to a rename after a last check."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError:
        if path.exists():
            raise _exists(path) from None
        os.replace(tmp, path)


def _exists(path: Path) -> OutputExistsError:
    return OutputExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")


def write_csv(frame: pd.DataFrame, path: str | Path, overwrite: bool = False) -> Path:
    """Write a DataFrame as CSV (no index) atomically."""
    return write_atomic(path, overwrite, lambda tmp: frame.to_csv(tmp, index=False))


def write_h5ad(adata: ad.AnnData, path: str | Path, overwrite: bool = False) -> Path:
    """Write an AnnData atomically."""
    return write_atomic(path, overwrite, lambda tmp: adata.write_h5ad(tmp))


def write_figure(figure, path: str | Path, overwrite: bool = False, dpi: int = 120) -> Path:
    """Save a matplotlib Figure atomically (format from the suffix)."""
    suffix = Path(path).suffix.lstrip(".") or "png"
    return write_atomic(
        path,
        overwrite,
        lambda tmp: figure.savefig(tmp, dpi=dpi, format=suffix, bbox_inches="tight"),
    )

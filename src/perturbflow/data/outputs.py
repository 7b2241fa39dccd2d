"""Writing results safely: atomic writes and output folders that never clobber user files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import pandas as pd


class OutputExistsError(FileExistsError):
    """An output would replace an existing file or folder and ``overwrite`` was not given."""


INCOMPLETE_MARKER = ".perturbflow-incomplete"


def prepare_output_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Create a run folder, marked incomplete until :func:`mark_complete` is called.

    An existing non-empty folder needs ``overwrite=True``, unless it is a run folder that never
    completed (a run that failed or was stopped): its rerun may write there, so a failed run
    never blocks its own rerun. With ``overwrite`` the folder is kept and only the files this run
    writes are replaced; nothing else in it is deleted.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is a file; choose another --out")
    unfinished = (path / INCOMPLETE_MARKER).exists()
    if path.exists() and any(path.iterdir()) and not (overwrite or unfinished):
        raise OutputExistsError(
            f"{path} exists and is not empty; choose a new --out, pass --overwrite (files "
            "written by this run are replaced, others are kept) or, for a benchmark, --resume"
        )
    path.mkdir(parents=True, exist_ok=True)
    (path / INCOMPLETE_MARKER).write_text("this run has not finished\n")
    return path


def mark_complete(path: str | Path) -> None:
    """Mark a run folder made by :func:`prepare_output_dir` as finished."""
    (Path(path) / INCOMPLETE_MARKER).unlink(missing_ok=True)


def write_atomic(path: str | Path, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Run ``write(temporary path)`` and rename the file into ``path``: a crash never leaves half
    a file. Refuses to replace an existing ``path`` unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


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

"""A full disk during a write leaves the previous file intact and no temporary behind."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from conftest import FORK
from perturbflow.data.outputs import write_csv, write_h5ad
from perturbflow.models.base import read_checkpoint, write_checkpoint


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def disk_full_after(monkeypatch):
    """``disk_full_after(n)``: every file opened for writing fails with ENOSPC after ``n`` bytes,
    like a filesystem that runs full in the middle of a write."""
    import builtins
    import io

    real_open = builtins.open

    class FullFile(io.FileIO):
        budget = 0

        def write(self, data):
            room = FullFile.budget - self.tell()
            if len(data) > room:
                super().write(bytes(data[: max(room, 0)]))
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    def full_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax"):
            raw = FullFile(file, mode.replace("b", "").replace("t", "") or "w")
            return raw if "b" in mode else io.TextIOWrapper(io.BufferedWriter(raw))
        return real_open(file, mode, *args, **kwargs)

    def arm(n_bytes: int) -> None:
        FullFile.budget = n_bytes
        monkeypatch.setattr(builtins, "open", full_open)

    return arm


def test_full_disk_while_writing_a_csv(tmp_path, disk_full_after):
    path = tmp_path / "results.csv"
    write_csv(pd.DataFrame({"a": [1, 2]}), path)
    original = path.read_bytes()
    disk_full_after(100)
    with pytest.raises(OSError, match="No space left"):
        write_csv(pd.DataFrame({"a": range(10_000)}), path, overwrite=True)
    assert path.read_bytes() == original
    assert _files(tmp_path) == ["results.csv"]


def test_full_disk_while_writing_a_checkpoint(tmp_path, disk_full_after):
    path = tmp_path / "model.npz"
    arrays = {"weights": np.arange(10.0)}
    write_checkpoint(path, model="m", config={}, meta={"v": 1}, arrays=arrays)
    original = path.read_bytes()
    disk_full_after(500)
    big = {"weights": np.random.default_rng(0).normal(size=50_000)}
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(path, model="m", config={}, meta={"v": 2}, arrays=big, overwrite=True)
    assert path.read_bytes() == original
    header, stored = read_checkpoint(path)
    assert header["meta"] == {"v": 1} and np.array_equal(stored["weights"], np.arange(10.0))
    assert _files(tmp_path) == ["model.npz"]


def test_full_disk_while_the_benchmark_saves_its_tables(tmp_path, disk_full_after):
    """The run loop's checkpoint after each (run, seed): results, timings and runs.json."""
    from perturbflow.eval.evaluate import RESULT_COLUMNS
    from perturbflow.eval.loop import _checkpoint

    row = dict.fromkeys(RESULT_COLUMNS, 0.0) | {"model": "additive", "seed": 1}
    first = [pd.DataFrame([row])]
    timings = [{"model": "additive", "seed": 1, "fit_s": 0.1, "predict_s": 0.1}]
    _checkpoint(first, timings, {"additive": {"model": "additive"}}, tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}
    disk_full_after(10)
    with pytest.raises(OSError, match="No space left"):
        _checkpoint(first * 500, timings * 2, {"additive": {}, "ridge": {}}, tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)} == before
    assert json.loads(before["runs.json"]) == {"additive": {"model": "additive"}}


def _write_over_limit(path, limit) -> None:
    # A real write error from the kernel: past RLIMIT_FSIZE write() fails with EFBIG
    # (SIGXFSZ ignored), as a write to a full filesystem fails with ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        write_h5ad(ad.AnnData(np.ones((2000, 50), dtype=np.float32)), path, overwrite=True)
    # h5py reports the failed write (OSError) and then a RuntimeError while closing the file.
    except (OSError, RuntimeError):
        os._exit(28)
    os._exit(0)


def test_kernel_refusing_the_write_leaves_the_previous_h5ad(tmp_path):
    path = tmp_path / "predictions.h5ad"
    write_h5ad(ad.AnnData(np.zeros((3, 2), dtype=np.float32)), path)
    original = path.read_bytes()
    child = FORK.Process(target=_write_over_limit, args=(path, 64 * 1024))
    child.start()
    child.join(60)
    assert child.exitcode == 28  # the write failed in the child
    assert path.read_bytes() == original
    assert ad.read_h5ad(path).shape == (3, 2)
    assert _files(tmp_path) == ["predictions.h5ad"]

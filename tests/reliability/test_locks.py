"""Two processes given the same output: the second refuses before writing anything."""

from __future__ import annotations

import os
import threading

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import FORK, kill_when, lock_held_elsewhere
from perturbflow.cli import app
from perturbflow.data.outputs import (
    INCOMPLETE_MARKER,
    LOCK_FILE,
    OutputExistsError,
    OutputLockedError,
    lock_output_dir,
    mark_complete,
    prepare_output_dir,
    write_csv,
)

runner = CliRunner()


def _listing(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*"))


def test_second_process_refuses_a_run_folder_in_use(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / INCOMPLETE_MARKER).write_text("this run has not finished\n")
    (folder / "results.csv").write_text("model,seed\nadditive,1\n")
    with lock_held_elsewhere(folder) as pid:
        before = _listing(folder)
        with pytest.raises(OutputLockedError, match=rf"another perturbflow process \(pid {pid}\)"):
            prepare_output_dir(folder)
        with pytest.raises(OutputLockedError, match="choose another --out"):
            prepare_output_dir(folder, overwrite=True)  # --overwrite does not break a lock
        assert _listing(folder) == before  # nothing written, nothing removed


def test_benchmark_into_a_folder_in_use_refuses_and_writes_nothing(screen_file, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / INCOMPLETE_MARKER).write_text("this run has not finished\n")
    args = ["benchmark", str(screen_file), "--out", str(out), "--models", "control_mean"]
    with lock_held_elsewhere(out):
        before = _listing(out)
        for extra in ([], ["--resume"], ["--overwrite"]):
            result = runner.invoke(app, [*args, "--seeds", "1", *extra])
            assert result.exit_code == 1, result.output
            assert "being written by another perturbflow process" in result.output
            assert _listing(out) == before


def test_lock_of_a_killed_run_is_released(tmp_path):
    """flock dies with its process: a run stopped by kill -9 never blocks its rerun."""
    folder = tmp_path / "run"

    def run_forever():
        prepare_output_dir(folder)
        threading.Event().wait()

    code = kill_when(run_forever, lambda: (folder / INCOMPLETE_MARKER).exists())
    assert code == -9
    assert (folder / LOCK_FILE).exists()  # the file stays; its lock does not
    assert prepare_output_dir(folder) == folder  # unfinished: rerun allowed, and not locked
    mark_complete(folder)
    assert not (folder / LOCK_FILE).exists() and not (folder / INCOMPLETE_MARKER).exists()


def test_finished_folder_is_refused_again_after_its_lock_is_released(tmp_path):
    folder = prepare_output_dir(tmp_path / "run")
    (folder / "results.csv").write_text("x\n")
    mark_complete(folder)
    with pytest.raises(OutputExistsError, match="--resume"):
        prepare_output_dir(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["results.csv"]


def test_a_process_may_lock_its_own_folder_twice(tmp_path):
    folder = prepare_output_dir(tmp_path / "run")
    assert lock_output_dir(folder) == folder  # the CLI's --resume path after prepare
    assert prepare_output_dir(folder) == folder  # a rerun in the same process (tests, notebooks)
    mark_complete(folder)


def _write_from_child(path, value, start):
    start.wait(10)
    try:
        write_csv(pd.DataFrame({"writer": [value] * 20_000}), path)
    except OutputExistsError:
        os._exit(17)
    os._exit(0)


def test_two_writers_of_one_file_second_refuses_first_intact(tmp_path):
    """Both start before the file exists; exactly one publishes it, whole; the other refuses."""
    path = tmp_path / "results.csv"
    start = FORK.Event()
    writers = [
        FORK.Process(target=_write_from_child, args=(path, name, start)) for name in ("a", "b")
    ]
    for writer in writers:
        writer.start()
    start.set()
    for writer in writers:
        writer.join(30)
    assert sorted(w.exitcode for w in writers) == [0, 17]
    winner = "a" if writers[0].exitcode == 0 else "b"
    table = pd.read_csv(path)
    assert len(table) == 20_000 and set(table["writer"]) == {winner}
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temporary left


def test_two_fits_into_one_checkpoint_dir_second_refuses(tmp_path):
    from test_crash_resume import Quadratic

    from perturbflow.train.trainer import TrainerSettings, fit_objective

    folder = tmp_path / "ckpt"
    (folder / "stage").mkdir(parents=True)
    with lock_held_elsewhere(folder / "stage"):
        with pytest.raises(OutputLockedError, match="stage is being written by another"):
            fit_objective(
                Quadratic(),
                TrainerSettings(accelerator="cpu", devices=1),
                stage="stage",
                lr=0.1,
                seed=0,
                has_val=True,
                folder=folder,
                max_steps=4,
            )
        assert [p.name for p in (folder / "stage").iterdir()] == [LOCK_FILE]

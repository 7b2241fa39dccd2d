"""Outputs are written atomically and never replace user files without ``overwrite``."""

from __future__ import annotations

import pandas as pd
import pytest

from perturbflow.data.outputs import OutputExistsError, prepare_output_dir, write_csv


def test_prepare_output_dir_creates_and_accepts_empty(tmp_path):
    made = prepare_output_dir(tmp_path / "a" / "b")
    assert made.is_dir()
    assert prepare_output_dir(made) == made  # empty folder is fine


def test_prepare_output_dir_refuses_non_empty_and_keeps_files(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare_output_dir(tmp_path)
    prepare_output_dir(tmp_path, overwrite=True)
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_prepare_output_dir_refuses_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        prepare_output_dir(target, overwrite=True)


def test_write_csv_atomic_and_no_clobber(tmp_path):
    path = tmp_path / "t.csv"
    write_csv(pd.DataFrame({"a": [1, 2]}), path)
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_csv(pd.DataFrame({"a": [3]}), path)
    assert pd.read_csv(path)["a"].tolist() == [1, 2]
    write_csv(pd.DataFrame({"a": [3]}), path, overwrite=True)
    assert pd.read_csv(path)["a"].tolist() == [3]
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # no temporary file left


def test_failed_write_leaves_original(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("original")

    class Broken(pd.DataFrame):
        def to_csv(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_csv(Broken({"a": [1]}), path, overwrite=True)
    assert path.read_text() == "original"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_an_unfinished_run_folder_does_not_block_its_rerun(tmp_path):
    from perturbflow.data.outputs import INCOMPLETE_MARKER, mark_complete

    folder = prepare_output_dir(tmp_path / "run")
    (folder / "splits").mkdir()  # the failed run got this far
    assert (folder / INCOMPLETE_MARKER).exists()
    again = prepare_output_dir(tmp_path / "run")  # no --overwrite needed
    mark_complete(again)
    assert not (folder / INCOMPLETE_MARKER).exists()
    with pytest.raises(OutputExistsError, match="--resume"):
        prepare_output_dir(tmp_path / "run")  # a finished run is protected again

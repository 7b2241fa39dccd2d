"""kill -9 during fit and during benchmark, then resume: the same checkpoint bytes, the same
results.csv; a damaged or tampered training checkpoint is refused, never unpickled."""

from __future__ import annotations

import dataclasses
import importlib
import os
import threading

import pytest
import torch
from _objectives import Quadratic
from typer.testing import CliRunner

from conftest import kill_when
from perturbflow.train.trainer import ResumeCheckpointError, TrainerSettings, fit_objective

runner = CliRunner()


def _fit_quadratic(folder, max_steps=4):
    return fit_objective(
        Quadratic(),
        TrainerSettings(accelerator="cpu", devices=1),
        stage="stage",
        lr=0.1,
        seed=0,
        has_val=True,
        folder=folder,
        max_steps=max_steps,
    )


def test_kill_during_fit_then_resume_gives_the_same_checkpoint_bytes(screen_data, tmp_path):
    from _configs import TINY_SCBIG

    from perturbflow.models import get_model

    dataset, split = screen_data()
    # Enough flow steps that the worker is still training when the first flow checkpoint lands:
    # checkpoints come every val_every=6 steps, so 18 cross-validation steps and 6 final ones
    # remain after the first.
    config = dataclasses.replace(TINY_SCBIG, flow_steps=24)
    reference = tmp_path / "reference.npz"
    get_model("scbig", config).fit(dataset, split).save(reference)

    folder, out = tmp_path / "ckpt", tmp_path / "resumed.npz"

    def fit_and_save():
        get_model("scbig", config).fit(dataset, split, checkpoint_dir=folder).save(out)

    code = kill_when(fit_and_save, lambda: (folder / "flow_cv" / "last.ckpt").exists())
    assert code == -9 and not out.exists()
    assert not (folder / "flow" / "last.ckpt").exists()  # killed inside the cross-validation fit
    get_model("scbig", config).fit(dataset, split, checkpoint_dir=folder).save(out)
    assert out.read_bytes() == reference.read_bytes()


def test_kill_during_benchmark_then_resume_gives_the_same_results_csv(
    screen_file, tmp_path, monkeypatch
):
    import perturbflow.eval.loop
    from perturbflow.cli import app

    # cell-eval's cross-check starts thread pools that a forked worker can deadlock on; it
    # writes its own table, not results.csv. benchmarks/reliability.py kills real processes.
    monkeypatch.setattr(perturbflow.eval.loop, "_crosscheck", lambda *args: None)
    # So do pdex's and polars' pools behind cell-eval's DE overlap; the numpy/scipy backend
    # computes the same overlap without them.
    for module in ("perturbflow.eval.overlap", "perturbflow.eval.evaluate"):
        monkeypatch.setattr(importlib.import_module(module), "resolve_backend", lambda _: "scipy")

    args = ["benchmark", str(screen_file), "--models", "control_mean,additive"]
    args += ["--seeds", "1,2", "--n-cells", "50", "--no-report"]  # results.csv is compared
    reference = tmp_path / "reference"
    done = runner.invoke(app, [*args, "--out", str(reference)])
    assert done.exit_code == 0, done.output

    out = tmp_path / "killed"

    def benchmark():
        app([*args, "--out", str(out)], standalone_mode=False)

    code = kill_when(benchmark, lambda: (out / "results.csv").exists())
    assert code == -9
    assert (out / ".perturbflow-incomplete").exists()  # the folder says it never finished
    resumed = runner.invoke(app, [*args, "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert (out / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()
    assert not (out / ".perturbflow-incomplete").exists()


def test_resume_refuses_a_truncated_training_checkpoint(tmp_path):
    _fit_quadratic(tmp_path)
    last = tmp_path / "stage" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(ResumeCheckpointError, match=r"last\.ckpt: cannot resume.*Delete"):
        _fit_quadratic(tmp_path, max_steps=8)


def test_resume_refuses_a_training_checkpoint_carrying_a_pickle(tmp_path):
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    _fit_quadratic(tmp_path)
    last = tmp_path / "stage" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    state["perturbflow_best"]["note"] = RunsCode()
    torch.save(state, last)
    with pytest.raises(ResumeCheckpointError, match="damaged or not written by perturbflow"):
        _fit_quadratic(tmp_path, max_steps=8)
    assert not marker.exists()


def test_an_intact_training_checkpoint_resumes_to_the_uninterrupted_result(tmp_path):
    straight = _fit_quadratic(tmp_path / "straight", max_steps=8)
    _fit_quadratic(tmp_path / "stopped", max_steps=4)
    resumed = _fit_quadratic(tmp_path / "stopped", max_steps=8)
    assert resumed.steps == straight.steps == 8
    assert torch.equal(resumed.best_state["weights"], straight.best_state["weights"])


def test_kill_while_a_worker_holds_the_checkpoint_lock_does_not_block_resume(tmp_path):
    from perturbflow.data.outputs import lock_output_dir

    stage = tmp_path / "stage"
    stage.mkdir()

    def hold():
        lock_output_dir(stage)
        (stage / "held").touch()
        threading.Event().wait()

    assert kill_when(hold, lambda: (stage / "held").exists()) == -9
    assert _fit_quadratic(tmp_path).steps == 4

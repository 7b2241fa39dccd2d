"""Peers in environments of their own: install commands, errors, the file protocol, the loop.

No peer package is installed and nothing is pip-installed here: a fake environment is a folder
whose ``bin/python`` runs this interpreter and whose adapter is a stub with a known answer
(each predicted cell = a control cell + the number of genes of its condition, on every gene).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perturbflow.data.conditions import parse_condition
from perturbflow.eval.loop import RunSpec, resolve_models, run
from perturbflow.models.base import MODELS, load_model
from perturbflow.models.peers import envs
from perturbflow.models.peers.cellflow import CellFlowConfig, CellFlowModel, gene_vectors
from perturbflow.models.peers.envs import (
    PEERS_DIR_ENV,
    PeerEnvError,
    PeerRunError,
    install_env,
    install_steps,
    require_env,
)
from perturbflow.models.peers.external import PeerConditionError

STUB_ADAPTER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import anndata as ad
    import numpy as np
    import pandas as pd

    work = Path(sys.argv[1])
    request = json.loads((work / "request.json").read_text())
    if request["options"].get("iterations") == 13:
        raise SystemExit("stub adapter: told to fail")
    cells = ad.read_h5ad(work / request["files"]["cells"])
    vectors = pd.read_csv(work / request["files"]["gene_vectors"], index_col=0)
    labels = cells.obs[request["condition_key"]].astype(str).to_numpy()
    control = np.asarray(cells.X)[labels == request["control"]]
    blocks, names = [], []
    for name in request["predict"]:
        blocks.append(control + len(request["condition_genes"][name]))
        names += [name] * len(control)
    out = ad.AnnData(
        X=np.vstack(blocks).astype(np.float32),
        obs=pd.DataFrame({request["condition_key"]: names}, index=[f"c{i}" for i in range(len(names))]),
        var=pd.DataFrame(index=cells.var_names),
    )
    out.write_h5ad(work / "predicted.h5ad")
    result = {
        "protocol": 1, "peer": "cellflow", "version": "0.0.9-stub", "output": "cells",
        "file": "predicted.h5ad", "fit_s": 0.5,
        "settings": {
            "trained_on": sorted(set(labels)),
            "vector_genes": sorted(vectors.index.astype(str)),
            "zero_vectors": int((vectors.abs().sum(axis=1) == 0).sum()),
        },
    }
    (work / "result.json").write_text(json.dumps(result))
    """
)


@pytest.fixture
def peers_root(tmp_path, monkeypatch) -> Path:
    """An empty peers folder (``$PERTURBFLOW_PEERS_DIR``)."""
    root = tmp_path / "peers"
    root.mkdir()
    monkeypatch.setenv(PEERS_DIR_ENV, str(root))
    return root


@pytest.fixture
def fake_cellflow(peers_root, tmp_path, monkeypatch) -> Path:
    """A cellflow environment that runs this interpreter and the stub adapter."""
    env = peers_root / "cellflow"
    (env / "bin").mkdir(parents=True)
    python = env / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    (env / "lib" / "python3.11" / "site-packages" / "cellflow_tools-0.0.9.dist-info").mkdir(
        parents=True
    )
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    (adapters / "cellflow_adapter.py").write_text(STUB_ADAPTER)
    monkeypatch.setattr(envs, "ADAPTERS", adapters)
    monkeypatch.setitem(MODELS, "cellflow", CellFlowModel)
    return env


# -- environments --------------------------------------------------------------------------------


def test_missing_environment_names_the_install_command(peers_root, screen_data):
    with pytest.raises(PeerEnvError, match="perturbflow peers install cellflow"):
        require_env("cellflow")
    dataset, split = screen_data("small", split="combo", split_seed=1)
    with pytest.raises(PeerEnvError, match="perturbflow peers install cellflow"):
        CellFlowModel().fit(dataset, split)


def test_broken_environment_names_the_install_command(peers_root):
    (peers_root / "cellflow" / "bin").mkdir(parents=True)
    (peers_root / "cellflow" / "bin" / "python").write_text("")
    status = envs.env_status("cellflow")
    assert status.exists and status.version is None and not status.ready
    with pytest.raises(PeerEnvError, match=r"lacks cellflow-tools.*peers install cellflow"):
        require_env("cellflow")


def test_peers_folder_follows_the_environment_variable(peers_root):
    assert envs.peers_dir() == peers_root
    assert envs.env_python("gears") == peers_root / "gears" / "bin" / "python"


def test_cellflow_install_steps_pin_cpu_jax_and_no_torch(peers_root):
    steps = install_steps("cellflow", python="/usr/bin/python3")
    assert steps[0] == ["/usr/bin/python3", "-m", "venv", "--clear", str(peers_root / "cellflow")]
    assert len(steps) == 2
    pip = steps[1]
    assert pip[:4] == [str(peers_root / "cellflow" / "bin" / "python"), "-m", "pip", "install"]
    assert "cellflow-tools==0.0.9" in pip and "jax==0.10.2" in pip
    assert not [arg for arg in pip if arg.startswith(("torch", "jax[cuda"))]


def test_gears_installs_torch_first_and_holds_it(peers_root, monkeypatch):
    monkeypatch.setenv(envs.TORCH_SPEC_ENV, "torch==9.9.9")
    calls: list[list[str]] = []

    def runner(command):
        calls.append(list(command))
        listed = "cell-gears==0.1.2\ntorch==9.9.9\n" if "list" in command else ""
        return subprocess.CompletedProcess(command, 0, stdout=listed, stderr="")

    status = install_env("gears", python="/usr/bin/python3", runner=runner)
    torch_step, peer_step = calls[1], calls[2]
    assert torch_step[-1] == "torch==9.9.9" and len([a for a in torch_step if "==" in a]) == 1
    constraints = peers_root / "gears" / "constraints.txt"
    assert peer_step[peer_step.index("-c") + 1] == str(constraints)
    assert constraints.read_text() == "torch==9.9.9\n"
    assert "cell-gears==0.1.2" in peer_step
    assert calls[-1][-2:] == ["-c", "import gears"]  # the import check comes last
    assert status.name == "gears"


def test_install_refuses_gpu_builds(peers_root):
    def runner(command):
        listed = "torch==2.13.0\ntorchvision==0.28.0\nnvidia-cublas-cu12==12.1\n"
        return subprocess.CompletedProcess(command, 0, stdout=listed if "list" in command else "")

    with pytest.raises(PeerEnvError, match="torchvision, nvidia-cublas-cu12"):
        install_env("gears", runner=runner)


def test_failed_install_step_is_reported(peers_root):
    def runner(command):
        failed = "pip" in command
        return subprocess.CompletedProcess(
            command, 1 if failed else 0, stdout="", stderr="No matching distribution" * failed
        )

    with pytest.raises(PeerEnvError, match="No matching distribution"):
        install_env("cellflow", runner=runner)


# -- the file protocol ---------------------------------------------------------------------------


def test_file_protocol_round_trip(fake_cellflow, screen_data, tmp_path):
    dataset, split = screen_data("small", split="combo", split_seed=1)
    model = CellFlowModel(CellFlowConfig(timeout_s=120)).fit(dataset, split)
    settings = model.peer_result_["settings"]
    # The peer sees the training cells only; val and test conditions reach it as names.
    assert settings["trained_on"] == sorted(split.train)
    assert settings["zero_vectors"] == 0
    genes = {g for name in [*split.train, *split.val, *split.test] for g in parse_condition(name)}
    assert set(settings["vector_genes"]) == genes
    assert model.peer_version_ == "0.0.9-stub"
    deltas = model.predict_delta(split.test)  # stub: + number of genes, on every gene
    expected = np.array([len(parse_condition(name)) for name in split.test], dtype=float)
    np.testing.assert_allclose(
        deltas.to_numpy(), expected[:, None].repeat(dataset.n_genes, 1), atol=1e-4
    )
    cells = model.predict(split.test[:2], n_cells=7, seed=3)
    assert cells.shape == (14, dataset.n_genes)
    first = np.asarray(cells.X[:7]).mean(axis=0)
    np.testing.assert_allclose(first - model.control_mean_, expected[0], atol=1e-4)
    with pytest.raises(PeerConditionError, match="predicts the conditions of the split"):
        model.predict_delta(["NOTAGENE"])
    path = model.save(tmp_path / "cellflow.npz")
    loaded = load_model(path)
    pd.testing.assert_frame_equal(loaded.predict_delta(split.test), deltas)
    np.testing.assert_array_equal(loaded.predict(split.test[:2], n_cells=7, seed=3).X, cells.X)


def test_adapter_failure_carries_its_log(fake_cellflow, screen_data):
    dataset, split = screen_data("small", split="combo", split_seed=1)
    with pytest.raises(PeerRunError, match="stub adapter: told to fail"):
        CellFlowModel(CellFlowConfig(iterations=13)).fit(dataset, split)


def test_gene_vectors_fill_missing_and_zero_rows():
    table = pd.DataFrame({"d0": [1.0, 3.0, 0.0], "d1": [0.0, 2.0, 0.0]}, index=["A", "B", "Z"])
    vectors = gene_vectors(table, ["ctrl", "A", "B"], ["A+C", "Z"])
    assert list(vectors.index) == ["A", "B", "C", "Z"]
    np.testing.assert_allclose(vectors.loc["C"], [2.0, 1.0])  # mean of trained A and B
    np.testing.assert_allclose(vectors.loc["Z"], [2.0, 1.0])  # all-zero would be padding
    np.testing.assert_allclose(vectors.loc["B"], [3.0, 2.0])


# -- the loop ------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["missing", "adapter"])
def test_run_completes_the_other_models_when_a_peer_fails(
    failure, peers_root, fake_cellflow, screen_data, tmp_path
):
    if failure == "missing":
        (fake_cellflow / "bin" / "python").unlink()
    dataset, _ = screen_data("small")
    out = tmp_path / "out"
    out.mkdir()
    result = run(
        dataset,
        "combo",
        [RunSpec("additive", "additive"), RunSpec("cellflow", "cellflow", {"iterations": 13})],
        seeds=[1, 2],
        out=out,
    )
    assert set(result.results["model"]) - {"noise_ceiling"} == {"additive"}
    assert len(result.timings) == 2 and set(result.timings["model"]) == {"additive"}
    failed = json.loads((out / "runs.json").read_text())["cellflow"]["failed"]
    assert sorted(failed) == ["1", "2"]
    expected = "perturbflow peers install cellflow" if failure == "missing" else "told to fail"
    assert expected in failed["1"]
    assert result.runs["cellflow"]["peer"] is True


def test_run_records_the_peer_version_and_fit_time(fake_cellflow, screen_data, tmp_path):
    dataset, _ = screen_data("small")
    out = tmp_path / "out"
    out.mkdir()
    result = run(
        dataset,
        "combo",
        [RunSpec("additive", "additive"), RunSpec("cellflow", "cellflow")],
        seeds=[1],
        out=out,
    )
    runs = json.loads((out / "runs.json").read_text())
    assert runs["cellflow"]["version"] == "0.0.9-stub"
    assert "version" not in runs["additive"] and "failed" not in runs["cellflow"]
    timings = result.timings.set_index("model")
    assert timings.loc["cellflow", "fit_s"] > 0
    assert "cellflow" in set(result.results["model"])


def test_naming_an_uninstalled_peer_says_how_to_install_it(peers_root, monkeypatch):
    monkeypatch.delitem(MODELS, "cellflow", raising=False)
    with pytest.raises(KeyError, match="perturbflow peers install cellflow"):
        resolve_models("additive,cellflow")


def test_peers_list_and_install_commands(peers_root):
    from typer.testing import CliRunner

    from perturbflow.cli import app

    listed = CliRunner().invoke(app, ["peers", "list"])
    assert listed.exit_code == 0
    assert "cellflow" in listed.output and "perturbflow peers install cellflow" in listed.output
    unknown = CliRunner().invoke(app, ["peers", "install", "scgpt"])
    assert unknown.exit_code == 1 and "unknown peer 'scgpt'" in unknown.output


def test_report_lists_peer_version_fit_time_and_failures(peers_root, tmp_path):
    from perturbflow.report.benchmark_report import peers_status

    timings = pd.DataFrame(
        {"model": ["cellflow", "cellflow", "additive"], "seed": [1, 2, 1], "fit_s": [100, 140, 1]}
    )
    timings.to_csv(tmp_path / "timings.csv", index=False)
    runs = {
        "cellflow": {
            "model": "cellflow",
            "peer": True,
            "version": "0.0.9",
            "failed": {"3": "PeerRunError: boom"},
        },
        "additive": {"model": "additive", "peer": False},
    }
    status = peers_status(runs, tmp_path)
    assert status["cellflow"] == (
        "ran in this benchmark: version 0.0.9; fit 120 s per seed (mean of 2); "
        "failed on seed(s) 3: PeerRunError: boom"
    )
    assert "additive" not in status


def test_a_peer_that_cannot_predict_a_test_condition_is_left_out(
    screen_data, tmp_path, monkeypatch
):
    """GEARS refuses conditions with a gene outside its GO graph (CollecTRI's ``NFKB``): the
    benchmark records that seed as the peer's failure and scores the other models."""
    from perturbflow.models.baselines import Additive
    from perturbflow.models.peers import UnknownPerturbationError

    class Blind(Additive):
        def predict(self, conditions, n_cells=100, seed=0):
            raise UnknownPerturbationError("GEARS cannot predict 1 condition(s): {'A+NFKB'}")

    monkeypatch.setitem(MODELS, "blind", Blind)
    dataset, _ = screen_data("small")
    out = tmp_path / "out"
    out.mkdir()
    result = run(
        dataset, "combo", [RunSpec("additive", "additive"), RunSpec("blind", "blind")], [1], out=out
    )
    assert set(result.results["model"]) - {"noise_ceiling"} == {"additive"}
    failed = json.loads((out / "runs.json").read_text())["blind"]["failed"]
    assert failed == {
        "1": "UnknownPerturbationError: GEARS cannot predict 1 condition(s): {'A+NFKB'}"
    }

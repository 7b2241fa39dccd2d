"""The sergio-rs knock-out screen engine: network choice, design, determinism, files and CLI.

Screens here run on a hand-written 30-gene regulon table in ``tmp_path`` with 20 cells per
condition and few SERGIO steps, so no test needs the shared data folder (except the registered
dataset, which is skipped without it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from perturbflow.cli import app
from perturbflow.data import read
from perturbflow.data.datasets import DATA_DIR_ENV, DATASETS, data_dir, load_dataset
from perturbflow.data.grnsim import GRNScreenConfig, load_regulons, simulate_grn_screen
from perturbflow.data.io import DataFileNotFoundError, DataValidationError

runner = CliRunner()
N_REGULATORS, N_TARGETS, TARGETS_EACH = 6, 24, 8


def regulon_table() -> pd.DataFrame:
    """6 regulators with 8 overlapping targets each, regulator cross-talk with a 2-cycle, a
    self-loop and a repeated pair; 30 genes in all."""
    rows = [
        (f"R{r}", f"T{(4 * r + t) % N_TARGETS}", 1 if (r + t) % 4 else -1)
        for r in range(N_REGULATORS)
        for t in range(TARGETS_EACH)
    ]
    rows += [("R0", "R1", 1), ("R1", "R0", -1), ("R2", "R3", 1), ("R3", "R4", -1)]
    rows += [("R5", "R0", 1), ("R4", "R4", 1), ("R0", "R1", -1)]
    return pd.DataFrame(rows, columns=["source", "target", "sign"])


@pytest.fixture(scope="module")
def network_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("regulons") / "regulons.csv"
    regulon_table().to_csv(path, index=False)
    return path


def small_config(network: Path, **overrides) -> GRNScreenConfig:
    values = dict(
        network=str(network),
        n_genes=30,
        n_regulators=N_REGULATORS,
        n_singles=4,
        n_doubles=4,
        n_cells=20,
        n_control_cells=20,
        scale_iter=5,
        safety_iter=50,
        regulator_pool_factor=1,
        seed=1,
    )
    return GRNScreenConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def screen(network_csv) -> ad.AnnData:
    pytest.importorskip("sergio_rs")
    return simulate_grn_screen(small_config(network_csv))


def dense(matrix) -> np.ndarray:
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)


def block(adata: ad.AnnData, condition: str, layer: str | None = None) -> np.ndarray:
    cells = (adata.obs["condition"] == condition).to_numpy()
    return dense(adata.layers[layer] if layer else adata.X)[cells]


def edges_of(adata: ad.AnnData) -> pd.DataFrame:
    return pd.DataFrame(adata.uns["grn_edges"])


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_gives_identical_screen_other_seed_differs(screen, network_csv) -> None:
    again = simulate_grn_screen(small_config(network_csv))
    np.testing.assert_array_equal(dense(screen.X), dense(again.X))
    np.testing.assert_array_equal(screen.layers["clean"], again.layers["clean"])
    pd.testing.assert_frame_equal(screen.obs, again.obs)
    other = simulate_grn_screen(small_config(network_csv, seed=2))
    assert not np.array_equal(screen.layers["clean"], other.layers["clean"])


def test_a_condition_depends_only_on_itself(screen, network_csv) -> None:
    """More doubles leave the control and singles untouched, cell for cell."""
    fewer = simulate_grn_screen(small_config(network_csv, n_doubles=1))
    singles = [c for c in fewer.obs["condition"].cat.categories if "+" not in c]
    assert len(singles) == 5
    for condition in singles:
        np.testing.assert_array_equal(block(fewer, condition), block(screen, condition))
        np.testing.assert_array_equal(
            block(fewer, condition, "clean"), block(screen, condition, "clean")
        )


def test_a_knock_out_never_leaks_into_the_next_condition(screen, network_csv) -> None:
    """sergio-rs's ko_perturbation mutates the network it is called on; each condition must
    start from a fresh one, so the control simulated after a knock-out is unchanged."""
    sergio_rs = pytest.importorskip("sergio_rs")
    from perturbflow.data.grnsim import _simulate_condition

    genes, edges = list(screen.var_names), edges_of(screen)
    knocked = screen.uns["simulator"]["knockouts"][0]
    config = small_config(network_csv)

    def run(knocked_out: tuple[str, ...]) -> np.ndarray:
        return _simulate_condition(sergio_rs, genes, edges, knocked_out, 10, config, 3, 4)

    before = run(())
    run((knocked,))
    np.testing.assert_array_equal(run(()), before)


# --- design -------------------------------------------------------------------------------------


def test_knocked_out_genes_are_zero_in_the_clean_layer(screen) -> None:
    genes = list(screen.var_names)
    conditions = [c for c in screen.obs["condition"].cat.categories if c != "ctrl"]
    assert sum("+" not in c for c in conditions) == 4 and sum("+" in c for c in conditions) == 4
    for condition in conditions:
        clean = block(screen, condition, "clean")
        for gene in condition.split("+"):
            assert np.all(clean[:, genes.index(gene)] == 0), (condition, gene)
        others = [i for i, g in enumerate(genes) if g not in condition.split("+")]
        assert clean[:, others].sum() > 0
    assert np.all(block(screen, "ctrl", "clean").sum(axis=0) > 0)


def test_true_network_is_a_dag_subset_of_the_prior_with_its_signs(screen) -> None:
    edges = edges_of(screen)
    prior = regulon_table().drop_duplicates(["source", "target"])
    merged = edges.merge(prior, on=["source", "target"], how="left", suffixes=("", "_prior"))
    assert merged["sign_prior"].notna().all(), "an edge is not in the prior"
    assert (merged["sign"] == merged["sign_prior"]).all()
    assert (np.sign(edges["k"]) == edges["sign"]).all()
    assert not (edges["source"] == edges["target"]).any()
    assert set(edges["source"]) | set(edges["target"]) == set(screen.var_names)
    # Kahn's algorithm removes every gene only if there is no cycle.
    remaining = edges[["source", "target"]].copy()
    nodes = set(screen.var_names)
    while nodes:
        roots = nodes - set(remaining["target"])
        assert roots, f"cycle among {sorted(nodes)}"
        nodes -= roots
        remaining = remaining[~remaining["source"].isin(roots)]


def test_doubles_pair_knocked_out_regulators_with_enough_targets(screen) -> None:
    edges, simulator = edges_of(screen), screen.uns["simulator"]
    out_degree = edges.groupby("source").size()
    conditions = list(screen.obs["condition"].cat.categories)
    singles = {c for c in conditions if c != "ctrl" and "+" not in c}
    doubles = [c for c in conditions if "+" in c]
    assert singles == set(simulator["knockouts"])
    assert all(out_degree[gene] >= simulator["min_targets"] for gene in singles)
    assert len(set(doubles)) == 4
    assert all(set(double.split("+")) <= singles for double in doubles)
    assert len(simulator["doubles_shared_targets"]) == len(simulator["doubles_random"]) == 2
    targets = edges.groupby("source")["target"].agg(set)
    shared = {
        double: len(targets[double.split("+")[0]] & targets[double.split("+")[1]])
        for double in doubles
    }
    best = max(shared.values())
    assert any(shared[d] == best for d in simulator["doubles_shared_targets"])


def test_counts_are_raw_and_normalised_on_read(screen, tmp_path) -> None:
    counts = dense(screen.X)
    assert np.all(counts == np.round(counts)) and counts.min() >= 0
    assert screen.obs["condition"].value_counts()["ctrl"] == 20
    simulator = screen.uns["simulator"]
    assert simulator["engine"] == "sergio" and simulator["version"]
    assert simulator["hill"] == 2 and simulator["seed"] == 1
    path = tmp_path / "screen.h5ad"
    screen.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(edges_of(back), edges_of(screen))
    assert list(back.uns["simulator"]["knockouts"]) == list(simulator["knockouts"])
    assert read(path).normalization == "log1p_cp10k"


def test_progress_bar_only_when_asked(network_csv, capsys) -> None:
    pytest.importorskip("sergio_rs")
    config = small_config(network_csv, n_singles=2, n_doubles=1)
    # The bar's counter ("4/4 [elapsed…"), not a word: log lines may reach stderr too.
    bar = re.compile(r"\d+/\d+ \[")
    simulate_grn_screen(config, progress=False)
    assert not bar.search(capsys.readouterr().err)
    simulate_grn_screen(config, progress=True)
    assert bar.search(capsys.readouterr().err)


def test_missing_sergio_rs_says_what_to_install(network_csv, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sergio_rs", None)
    with pytest.raises(ImportError, match=r"perturbflow\[sim\]"):
        simulate_grn_screen(small_config(network_csv))


# --- configuration and regulon tables ------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_doubles": 7}, "n_doubles"),
        ({"hill": 2.0}, "hill must be an integer"),
        ({"mr_low": (0.5, 3.0)}, "overlap"),
        ({"n_regulators": 30}, "n_genes"),
        ({"k_range": (0.0, 1.0)}, "k_range"),
    ],
)
def test_config_rejects_impossible_settings(network_csv, overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        small_config(network_csv, **overrides)


def test_regulon_tables_accept_tf_and_mor_columns(tmp_path) -> None:
    path = tmp_path / "regulons.tsv"
    pd.DataFrame(
        {
            "tf": ["A", "A", "A", "B", "C"],
            "target": ["X", "X", "Y", "X", "D+E"],
            "mor": [1, -1, 0, -0.5, 1],
        }
    ).to_csv(path, sep="\t", index=False)
    edges = load_regulons(path)
    assert list(edges.columns) == ["source", "target", "sign"]
    # The repeated pair keeps its first sign; zero signs and unusable symbols are dropped.
    assert edges.to_dict("records") == [
        {"source": "A", "target": "X", "sign": 1},
        {"source": "B", "target": "X", "sign": -1},
    ]


def test_bad_network_path_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(DataFileNotFoundError, match="collectri, dorothea"):
        load_regulons(tmp_path / "nope.csv")


def test_missing_columns_are_named(tmp_path) -> None:
    path = tmp_path / "regulons.csv"
    pd.DataFrame({"source": ["A"], "target": ["B"]}).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=r"sign column.*found columns"):
        load_regulons(path)
    pd.DataFrame({"source": ["A"], "target": ["B"], "sign": ["up"]}).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match="non-numeric value 'up'"):
        load_regulons(path)


def test_builtin_network_without_data_folder_names_the_variable(tmp_path) -> None:
    with pytest.raises(DataFileNotFoundError, match=DATA_DIR_ENV):
        load_regulons("collectri", data_dir=tmp_path)


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_simulate_sergio_writes_a_screen_and_refuses_to_overwrite(network_csv, tmp_path):
    pytest.importorskip("sergio_rs")
    out = tmp_path / "screen.h5ad"
    args = ["simulate", "--engine", "sergio", "--network", str(network_csv), "--out", str(out)]
    args += ["--regulators", "6", "--singles", "3", "--doubles", "2", "--cells", "10"]
    args += ["--control-cells", "10", "--genes", "30", "--seed", "5", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    adata = ad.read_h5ad(out)
    assert adata.obs["condition"].nunique() == 1 + 3 + 2
    assert adata.uns["simulator"]["seed"] == 5
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    typed = runner.invoke(app, [*args, "--overwrite", "--contexts", "2"])
    assert typed.exit_code == 0, typed.output
    assert set(ad.read_h5ad(out).obs["cell_type"]) == {"type0", "type1"}


def test_cli_simulate_synthetic_rejects_sergio_options(tmp_path) -> None:
    out = tmp_path / "screen.h5ad"
    result = runner.invoke(app, ["simulate", "--out", str(out), "--network", "collectri"])
    assert result.exit_code == 1 and "--engine sergio" in result.output
    assert not out.exists()
    args = ["simulate", "--out", str(out), "--genes", "40", "--singles", "4", "--doubles", "2"]
    result = runner.invoke(app, [*args, "--cells", "10", "--control-cells", "20"])
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(out).n_vars == 40


# --- the staged screen ----------------------------------------------------------------------------


def test_staged_screen_is_registered_with_the_oracle_rule() -> None:
    spec = DATASETS["grnsim_collectri_s1"]
    assert spec.local_path == "grnsim_collectri_s1/screen.h5ad"
    assert (spec.condition_key, spec.control) == ("condition", "ctrl")
    assert (spec.perturbation_type, spec.default_split) == ("CRISPRko", "combo")
    assert "oracle network" in spec.notes and "sergio-rs" in spec.citation


def test_staged_screen_loads() -> None:
    folder = data_dir()
    spec = DATASETS["grnsim_collectri_s1"]
    if folder is None or not (folder / str(spec.local_path)).is_file():
        pytest.skip(f"staged screen not found: set {DATA_DIR_ENV} to the folder holding it")
    dataset = load_dataset("grnsim_collectri_s1")
    assert dataset.normalization == "log1p_cp10k"
    assert dataset.n_genes == 250
    assert sum("+" in c for c in dataset.conditions) == 100


def test_cell_types_differ_in_their_master_regulators_and_share_the_network(
    screen, network_csv
) -> None:
    """Two types: every condition in both, n cells each; types differ in expression; one type
    alone is the one-type screen's design (same conditions, knock-outs zero in both)."""
    typed = simulate_grn_screen(small_config(network_csv, n_cell_types=2))
    per_type = pd.crosstab(typed.obs["condition"], typed.obs["cell_type"])
    assert list(per_type.columns) == ["type0", "type1"]
    counts = screen.obs["condition"].value_counts()
    assert (per_type["type0"] == counts.reindex(per_type.index)).all()
    assert (per_type["type1"] == per_type["type0"]).all()
    control = block(typed, "ctrl", "clean")
    kinds = typed.obs.loc[typed.obs["condition"] == "ctrl", "cell_type"].to_numpy()
    type_means = [control[kinds == t].mean(axis=0) for t in ("type0", "type1")]
    assert np.abs(type_means[0] - type_means[1]).max() > 0.5
    knocked = typed.uns["simulator"]["knockouts"][0]
    column = list(typed.var_names).index(knocked)
    assert np.all(block(typed, knocked, "clean")[:, column] == 0)
    assert "cell_type" not in screen.obs
    assert typed.uns["simulator"]["n_cell_types"] == 2

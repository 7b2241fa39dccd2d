"""Guide-level conditions: reading, the guide → gene map, guide splits, the guide fallback and
guide efficiency."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbflow.data import DataValidationError, read
from perturbflow.data.guides import (
    EFFICIENCY_COLUMNS,
    GuideError,
    NotGuideLevelError,
    guide_efficiency,
    read_guide_map,
)
from perturbflow.data.splits import Split, make_split, unseen_guide_split

GENES = [f"G{i}" for i in range(40)]


def guide_screen(n_cells: int = 12) -> ad.AnnData:
    """Control plus genes A, B, C with guides A_1, A_2, A_3, B_1, B_2, C_1; guide A_k of gene A
    knocks A's downstream genes down by k (so guides of one gene differ in strength)."""
    rng = np.random.default_rng(0)
    effects = {"A": rng.normal(0, 1, 40), "B": rng.normal(0, 1, 40), "C": rng.normal(0, 1, 40)}
    guides = {"A_1": "A", "A_2": "A", "A_3": "A", "B_1": "B", "B_2": "B", "C_1": "C"}
    rows, genes, guide_labels = [], [], []
    for _ in range(3 * n_cells):
        rows.append(5 + rng.normal(0, 0.1, 40))
        genes.append("ctrl")
        guide_labels.append("NTC_1")
    for guide, gene in guides.items():
        strength = float(guide.split("_")[1])
        for _ in range(n_cells):
            rows.append(5 + strength * 0.5 * effects[gene] + rng.normal(0, 0.1, 40))
            genes.append(gene)
            guide_labels.append(guide)
    obs = pd.DataFrame({"gene": genes, "guide": guide_labels})
    obs.index = [f"c{i}" for i in range(len(obs))]
    return ad.AnnData(X=np.asarray(rows, np.float32), obs=obs, var=pd.DataFrame(index=GENES))


def test_guides_become_conditions_and_the_map_is_kept():
    dataset = read(guide_screen(), condition_key="gene", guide_key="guide")
    assert sorted(dataset.conditions) == ["A_1", "A_2", "A_3", "B_1", "B_2", "C_1", "ctrl"]
    assert dataset.guide_genes == {
        "A_1": "A",
        "A_2": "A",
        "A_3": "A",
        "B_1": "B",
        "B_2": "B",
        "C_1": "C",
    }
    genes = dataset.adata.obs["perturbflow_gene_condition"].astype(str)
    assert set(genes) == {"A", "B", "C", "ctrl"}
    assert dataset.unmeasured_genes == frozenset({"A", "B", "C"})  # genes, not guide names


def test_a_guide_map_must_name_every_guide(tmp_path):
    path = tmp_path / "map.csv"
    pd.DataFrame({"guide": ["A_1", "A_2", "A_3", "B_1", "B_2"], "gene": list("AAABB")}).to_csv(
        path, index=False
    )
    with pytest.raises(DataValidationError, match=r"\['C_1'\] map to no gene"):
        read(guide_screen(), condition_key="gene", guide_key="guide", guide_map=path)


def test_a_guide_map_that_disagrees_with_the_cells_is_refused():
    mapping = {"A_1": "A", "A_2": "A", "A_3": "B", "B_1": "B", "B_2": "B", "C_1": "C"}
    with pytest.raises(DataValidationError, match="A_3.*map says B, cells say A"):
        read(guide_screen(), condition_key="gene", guide_key="guide", guide_map=mapping)


def test_a_guide_found_with_two_genes_is_refused():
    adata = guide_screen()
    adata.obs.loc[adata.obs["guide"] == "B_2", "guide"] = "A_1"
    with pytest.raises(DataValidationError, match="more than one gene.*A_1"):
        read(adata, condition_key="gene", guide_key="guide")


def test_guide_names_with_the_separator_and_missing_guides_are_refused():
    adata = guide_screen()
    adata.obs["guide"] = adata.obs["guide"].replace({"C_1": "C+1"})
    with pytest.raises(DataValidationError, match=r"\['C\+1'\] contain '\+'"):
        read(adata, condition_key="gene", guide_key="guide")
    adata = guide_screen()
    adata.obs["guide"] = adata.obs["guide"].astype(object)
    adata.obs.loc["c40", "guide"] = None
    with pytest.raises(DataValidationError, match="1 perturbed cell.*have no guide"):
        read(adata, condition_key="gene", guide_key="guide")
    with pytest.raises(DataValidationError, match="obs has no guide column 'sgRNA'"):
        read(guide_screen(), condition_key="gene", guide_key="sgRNA")


def test_guide_map_files_are_read_and_checked(tmp_path):
    path = tmp_path / "map.tsv"
    path.write_text("guide\tgene\nA_1\tA\nA_1\tB\n")
    with pytest.raises(GuideError, match=r"\['A_1'\] map to more than one gene"):
        read_guide_map(path)
    path.write_text("guide\tgene\nA_1\tA\nB_1\tB\n")
    assert read_guide_map(path) == {"A_1": "A", "B_1": "B"}
    with pytest.raises(GuideError, match="not found"):
        read_guide_map(tmp_path / "absent.csv")


def test_unseen_guide_split_keeps_every_gene_seen_through_another_guide(tmp_path):
    dataset = read(guide_screen(), condition_key="gene", guide_key="guide")
    guides = dataset.guide_genes
    for seed in range(1, 6):
        split = make_split("unseen_guide", dataset.conditions, seed=seed, guide_map=guides)
        assert split.test and set(split.test_subgroups()) == {"unseen_guide"}
        assert "C_1" not in split.test  # a gene with one guide cannot lose it
        seen = {guides[g] for g in (*split.train, *split.val) if g != "ctrl"}
        assert {guides[g] for g in split.test} <= seen
        assert len({guides[g] for g in split.test}) == len(split.test)  # one per gene here
    again = make_split("unseen_guide", dataset.conditions, seed=3, guide_map=guides)
    split = make_split("unseen_guide", dataset.conditions, seed=3, guide_map=guides)
    assert split.test == again.test
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json").params["guide_map"] == guides
    assert json.loads((tmp_path / "split.json").read_text())["kind"] == "unseen_guide"


def test_unseen_guide_gene_split_holds_out_whole_genes():
    dataset = read(guide_screen(), condition_key="gene", guide_key="guide")
    guides = dataset.guide_genes
    split = make_split("unseen_guide_gene", dataset.conditions, seed=2, guide_map=guides)
    held = {guides[g] for g in split.test}
    assert set(split.test) == {g for g, gene in guides.items() if gene in held}
    assert not held & {guides[g] for g in (*split.train, *split.val) if g != "ctrl"}


def test_guide_splits_need_the_map():
    with pytest.raises(ValueError, match="needs guide-level conditions"):
        unseen_guide_split(["ctrl", "A_1", "A_2"], seed=1, guide_map={})


def test_a_held_out_guide_is_predicted_by_its_genes_other_guides():
    from perturbflow.models import get_model
    from perturbflow.models.baselines.calibrated import CalibratedAdditiveConfig

    dataset = read(guide_screen(), condition_key="gene", guide_key="guide")
    split = Split(
        kind="manual",
        seed=0,
        train=("ctrl", "A_1", "A_3", "B_1", "B_2", "C_1"),
        val=(),
        test=("A_2",),
        subgroups={"A_2": "unseen_guide"},
    )
    config = CalibratedAdditiveConfig(calibrate=False, target_aware=False)
    model = get_model("calibrated_additive", config).fit(dataset, split)
    deltas = model.train_deltas_
    expected = (deltas.loc["A_1"] + deltas.loc["A_3"]) / 2  # strengths 1 and 3: mean is A_2's
    predicted = model.predict_delta(["A_2"]).loc["A_2"]
    np.testing.assert_allclose(predicted.to_numpy(), expected.to_numpy(), atol=1e-6)
    plain = get_model("additive").fit(dataset, split).predict_delta(["A_2"]).loc["A_2"]
    truth = dataset.mean_expression(["A_2"]).loc["A_2"] - model.control_mean_
    assert np.abs(predicted - truth).mean() < 0.5 * np.abs(plain - truth).mean()


def test_cli_fits_at_guide_level_with_an_unseen_guide_split(tmp_path):
    from typer.testing import CliRunner

    from perturbflow.cli import app

    path = tmp_path / "guides.h5ad"
    guide_screen().write_h5ad(path)
    out = tmp_path / "model.npz"
    args = ["fit", str(path), "--condition-key", "gene", "--guide-key", "guide"]
    args += ["--split-kind", "unseen_guide", "--model", "calibrated_additive", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    split = Split.load(out.with_suffix(".split.json"))
    assert split.kind == "unseen_guide" and split.params["guide_map"]["C_1"] == "C"
    bad_args = [
        *args[:6],
        "--out",
        str(tmp_path / "b.npz"),
        "--guide-map",
        str(tmp_path / "none.csv"),
    ]
    bad = CliRunner().invoke(app, bad_args)
    assert bad.exit_code == 1 and "none.csv not found" in bad.output


# Planted target levels (normalised expression, before log1p) of the efficiency screen: each
# guide's cells hold its target at the given mean, every other gene at the control mean.
CONTROL_LEVELS = {"A": 10.0, "B": 6.0, "C": 0.0}
GUIDE_LEVELS = {
    "A_1": ("A", {"A": 2.0}),  # knockdown 0.8
    "A_2": ("A", {}),  # no knockdown
    "B_1": ("B", {"B": 3.0}),  # knockdown 0.5
    "B_2": ("B", {}),
    "C_1": ("C", {}),  # C is not expressed in control cells: no knockdown can be seen
    "D_1": ("D", {}),  # D is not measured
    "AB_1": ("A+B", {"A": 5.0}),  # one construct on two genes: A halved, B untouched
}


def efficiency_screen(n_cells: int = 10) -> ad.AnnData:
    """Control cells and the guides of ``GUIDE_LEVELS``; a target's cells alternate between
    level ± 10 % so each group's mean is exactly the planted level, and three background genes."""
    rng = np.random.default_rng(0)
    spread = np.where(np.arange(n_cells) % 2 == 0, 1.1, 0.9)  # (n,), mean exactly 1
    blocks, genes, guides = [], [], []
    for guide, (gene, levels) in [("NTC", ("ctrl", {})), *GUIDE_LEVELS.items()]:
        count = 2 * n_cells if guide == "NTC" else n_cells
        targets = [
            {**CONTROL_LEVELS, **levels}[name] * np.tile(spread, count // n_cells)
            for name in CONTROL_LEVELS
        ]
        background = rng.uniform(1.0, 5.0, (count, 3))  # (count, 3)
        blocks.append(np.column_stack([*targets, background]))  # (count, 6)
        genes += [gene] * count
        guides += [guide] * count
    obs = pd.DataFrame({"gene": genes, "guide": guides}, index=[f"c{i}" for i in range(len(genes))])
    var = pd.DataFrame(index=[*CONTROL_LEVELS, "G0", "G1", "G2"])
    return ad.AnnData(X=np.log1p(np.vstack(blocks)).astype(np.float32), obs=obs, var=var)


def test_guide_efficiency_recovers_the_planted_knockdowns():
    dataset = read(efficiency_screen(), condition_key="gene", guide_key="guide")
    table = guide_efficiency(dataset).set_index(["guide", "gene"])
    assert list(table.reset_index().columns) == list(EFFICIENCY_COLUMNS)
    order = [("A_1", "A"), ("A_2", "A"), ("AB_1", "A"), ("AB_1", "B"), ("B_1", "B")]
    order += [("B_2", "B"), ("C_1", "C"), ("D_1", "D")]
    assert sorted(table.index) == sorted(order)
    table = table.loc[order]
    np.testing.assert_allclose(
        table["knockdown"], [0.8, 0.0, 0.5, 0.0, 0.5, 0.0, np.nan, np.nan], atol=1e-5
    )
    np.testing.assert_allclose(
        table["control_mean"], [10, 10, 10, 6, 6, 6, 0, np.nan], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        table["guide_mean"], [2, 10, 5, 6, 3, 6, 0, np.nan], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        table["log_fold_change"][:6], np.log2([0.2, 1, 0.5, 1, 0.5, 1]), atol=1e-5
    )
    assert table.loc[("C_1", "C"), "log_fold_change"] == 0.0  # two zero means: no change
    p = table["p_value"]
    assert (p.iloc[[0, 2, 4]] < 1e-3).all() and (p.iloc[[1, 3, 5]] > 0.3).all()
    assert p.iloc[6] == 1.0  # C is zero everywhere: no evidence of a knockdown
    # Benjamini-Hochberg over the 7 tested rows: the i-th smallest p times 7 / i, made monotone.
    fdr = table["fdr"].iloc[:7].to_numpy()
    tested = p.iloc[:7].to_numpy()
    ranks = tested.argsort().argsort() + 1  # (7,) 1-based
    raw = tested * 7 / ranks
    expected = np.array([raw[tested >= value].min() for value in tested]).clip(max=1.0)
    np.testing.assert_allclose(fdr, expected)
    assert np.isnan(table.loc[("D_1", "D"), "fdr"]) and (fdr >= tested).all()
    assert table["efficient"].tolist() == [True, False, True, False, True, False, False, False]
    assert table["target_measured"].tolist() == [True] * 7 + [False]
    assert np.isnan(table.loc[("D_1", "D"), ["control_mean", "p_value"]].astype(float)).all()
    assert (table["n_cells"] == 10).all()
    # The threshold is a switch: at 0.6 only the 80 % guide is efficient.
    strict = guide_efficiency(dataset, min_knockdown=0.6).set_index(["guide", "gene"])
    assert strict.loc[order, "efficient"].tolist() == [True] + [False] * 7


def test_guide_efficiency_is_the_same_on_sparse_data():
    dense = efficiency_screen()
    sparse = dense.copy()
    sparse.X = sp.csr_matrix(sparse.X)
    tables = [
        guide_efficiency(read(adata, condition_key="gene", guide_key="guide"))
        for adata in (dense, sparse)
    ]
    pd.testing.assert_frame_equal(*tables)


def test_guide_efficiency_needs_guide_level_data():
    dataset = read(efficiency_screen(), condition_key="gene")
    with pytest.raises(NotGuideLevelError, match="not read at guide level.*guide_key="):
        guide_efficiency(dataset)

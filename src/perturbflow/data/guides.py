"""Guide-level conditions: one condition per guide RNA, with the map from guide to gene.

A screen perturbs a gene through several guides, and guides of one gene knock it down to
different degrees. At guide level each guide is a condition of its own (its name is the
condition, e.g. ``STAT2g2``) and the dataset records which gene each guide targets
(``uns["perturbflow"]["guide_map"]``, also ``obs["perturbflow_gene_condition"]``, the gene-level
condition of each cell). Models see guide names as perturbation tokens; splits that need the
map (:func:`perturbflow.data.splits.unseen_guide_split`) read it from the dataset.

The map comes from a table the user gives (``guide_map``: a mapping or a CSV/TSV whose first two
columns are guide and gene) or, without one, from the data: each guide's cells carry the gene in
the condition column, and a guide seen with two genes is an error.

:func:`guide_efficiency` measures how far each guide knocks its own target down, so users can
see which guides worked.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import false_discovery_control, mannwhitneyu

from perturbflow.data.conditions import CONTROL_NAME, parse_condition

if TYPE_CHECKING:  # io imports this module
    from perturbflow.data.io import PerturbationDataset

__all__ = [
    "EFFICIENCY_COLUMNS",
    "GUIDE_MAP_KEY",
    "GuideError",
    "NotGuideLevelError",
    "guide_conditions",
    "guide_efficiency",
    "read_guide_map",
]

GUIDE_MAP_KEY = "guide_map"  # in adata.uns["perturbflow"]
GENE_CONDITION_COLUMN = "perturbflow_gene_condition"


EFFICIENCY_COLUMNS = (
    "guide",
    "gene",
    "n_cells",
    "target_measured",
    "control_mean",
    "guide_mean",
    "log_fold_change",
    "knockdown",
    "p_value",
    "fdr",
    "efficient",
)
# scanpy's rank_genes_groups pseudocount: a log fold change of two zero means is 0, never NaN.
_LFC_EPS = 1e-9


class GuideError(ValueError):
    """Guide names that cannot be turned into guide-level conditions."""


class NotGuideLevelError(GuideError):
    """A guide-level result was asked of a dataset read without ``guide_key``."""


def read_guide_map(source: str | Path | Mapping[str, str]) -> dict[str, str]:
    """A guide → gene mapping from a mapping or a CSV/TSV file (first two columns)."""
    if isinstance(source, Mapping):
        return {str(k): str(v) for k, v in source.items()}
    path = Path(source)
    if not path.exists():
        raise GuideError(f"guide map {path} not found; give a CSV/TSV of guide,gene rows")
    table = pd.read_csv(path, sep=None, engine="python", dtype=str)
    if table.shape[1] < 2:
        raise GuideError(
            f"guide map {path}: needs two columns (guide, gene), found {list(table.columns)}"
        )
    guides, genes = table.iloc[:, 0].str.strip(), table.iloc[:, 1].str.strip()
    duplicated = guides[guides.duplicated() & (genes != genes.groupby(guides).transform("first"))]
    if len(duplicated):
        raise GuideError(
            f"guide map {path}: guide(s) {sorted(set(duplicated))[:5]} map to more than one gene"
        )
    return dict(zip(guides, genes, strict=True))


def guide_conditions(
    guides: pd.Series,
    genes: pd.Series,
    where: str,
    guide_map: Mapping[str, str] | None = None,
    separator: str = "+",
) -> tuple[pd.Series, dict[str, str]]:
    """Each cell's guide-level condition and the guide → gene map of the perturbed guides.

    ``guides``: each cell's guide (``obs[guide_key]``); ``genes``: its canonical gene-level
    condition (control cells keep the control condition whatever their guide). Raises
    :class:`GuideError` for a perturbed cell without a guide, a guide the map does not name, a
    guide whose map disagrees with the cells' gene, a guide of two genes, or a guide name that
    contains the combination separator.
    """
    guides = guides.astype("string").str.strip()
    genes = genes.astype(str)
    perturbed = (genes != CONTROL_NAME).to_numpy()
    missing = perturbed & (guides.isna() | guides.eq("")).to_numpy()
    if missing.any():
        raise GuideError(
            f"{where}: {int(missing.sum())} perturbed cell(s) have no guide (first: "
            f"{list(guides.index[missing][:3])}); give every perturbed cell its guide or drop them"
        )
    pairs = pd.DataFrame({"guide": guides[perturbed].astype(str), "gene": genes[perturbed]})
    observed = pairs.drop_duplicates()
    ambiguous = observed[observed["guide"].duplicated(keep=False)]
    if len(ambiguous):
        examples = ambiguous.groupby("guide")["gene"].apply(sorted).head(3).to_dict()
        raise GuideError(
            f"{where}: guide(s) are found with more than one gene: {examples}; a guide targets "
            "one gene (combinations of guides are not supported at guide level)"
        )
    inferred = dict(zip(observed["guide"], observed["gene"], strict=True))
    if guide_map is not None:
        unknown = sorted(set(inferred) - set(guide_map))
        if unknown:
            raise GuideError(
                f"{where}: guide(s) {unknown[:8]} map to no gene in the guide map "
                f"({len(unknown)} of {len(inferred)}); add them to the map"
            )
        wrong = {g: (guide_map[g], gene) for g, gene in inferred.items() if guide_map[g] != gene}
        if wrong:
            shown = {g: f"map says {m}, cells say {c}" for g, (m, c) in list(wrong.items())[:3]}
            raise GuideError(f"{where}: the guide map disagrees with the cells' genes: {shown}")
    bad = sorted(g for g in inferred if separator in g or g == CONTROL_NAME)
    if bad:
        raise GuideError(
            f"{where}: guide name(s) {bad[:5]} contain {separator!r} or are the control label; "
            "rename them"
        )
    labels = genes.where(~perturbed, guides.astype(str))
    return labels.astype(str), inferred


def guide_efficiency(
    dataset: PerturbationDataset, min_knockdown: float = 0.3, alpha: float = 0.05
) -> pd.DataFrame:
    """How far each guide knocks its own target gene down, against the control cells.

    One row per guide (columns :data:`EFFICIENCY_COLUMNS`); a guide whose gene-level condition
    names several genes (``A+B``, e.g. a dual-guide construct under one name) has one row per
    target gene. Means are of the normalised expression before its log, ``expm1`` of the
    dataset's log1p ``X`` (counts per 10k when :func:`~perturbflow.data.read` normalised counts),
    so ``knockdown = 1 - guide_mean / control_mean`` is the fraction of the transcript removed,
    as a qPCR would report it, clipped to ``[0, 1]``: a guide that raises its target knocks down
    0, and the sign stays in ``log_fold_change``, ``log2`` of the ratio with scanpy's pseudocount
    1e-9. ``p_value``: one-sided Mann-Whitney U test that the guide's cells express the target
    less than the control cells; ``fdr``: Benjamini-Hochberg over the table's tested rows, since a
    screen tests hundreds of guides and rarely detected targets dip by chance. Control cells are
    pooled over contexts and batches. A target not detected in any control cell has no
    knockdown (NaN); a target not in ``var`` gives NaN everywhere and ``target_measured``
    False. Only the target columns are read, so sparse ``X`` is never densified.

    ``efficient``: ``knockdown >= min_knockdown`` and ``fdr <= alpha``. The default 0.3 is a
    lenient floor, not a tuned value: a working CRISPRi guide usually removes well over half of
    its target's transcript, so one below 0.3 has likely failed, and guides in between are left
    for the user to judge from ``knockdown``; the test keeps chance dips of guides with few cells
    out. In knock-out (Cas9) screens a cut gene's transcript may persist (not every frameshift
    triggers decay), so a guide that looks inefficient here may still work. Raises
    :class:`NotGuideLevelError` for a dataset read without ``guide_key``.
    """
    guides = dataset.guide_genes
    if not guides:
        raise NotGuideLevelError(
            f"{dataset.source}: not read at guide level, so guides have no efficiency; read it "
            "with guide_key= naming the obs column of each cell's guide"
        )
    labels = dataset.condition_labels.to_numpy()
    cells_of = pd.RangeIndex(len(labels)).groupby(labels)  # condition → cell positions
    if CONTROL_NAME not in cells_of:
        raise GuideError(
            f"{dataset.source}: no control cells to measure the guides' knockdown against; keep "
            "the control cells (e.g. in subset())"
        )
    guides_of: dict[str, list[str]] = {}  # target gene → its guides with cells
    for guide, condition in sorted(guides.items()):
        if guide in cells_of:  # a subset may have lost some guides' cells
            for gene in sorted(parse_condition(condition)):
                guides_of.setdefault(gene, []).append(guide)
    measured = [gene for gene in guides_of if gene in dataset.genes]
    control = _block(dataset, cells_of[CONTROL_NAME], measured)  # (control cells, targets)
    rows = [
        {"guide": guide, "gene": gene, "n_cells": len(cells_of[guide]), "target_measured": False}
        for gene in sorted(set(guides_of) - set(measured))
        for guide in guides_of[gene]
    ]
    for column, gene in enumerate(measured):
        in_control = _normalised(control, column)  # (control cells,)
        control_mean = float(in_control.mean())
        # One read per gene: the cells of all its guides, only its column.
        targeted = np.concatenate([cells_of[guide] for guide in guides_of[gene]])
        values = _normalised(_block(dataset, targeted, [gene]), 0)  # (cells of its guides,)
        start = 0
        for guide in guides_of[gene]:
            in_guide = values[start : start + len(cells_of[guide])]  # (cells of the guide,)
            start += len(in_guide)
            guide_mean = float(in_guide.mean())
            rows.append(
                {
                    "guide": guide,
                    "gene": gene,
                    "n_cells": len(in_guide),
                    "target_measured": True,
                    "control_mean": control_mean,
                    "guide_mean": guide_mean,
                    "log_fold_change": float(
                        np.log2((guide_mean + _LFC_EPS) / (control_mean + _LFC_EPS))
                    ),
                    "knockdown": float(np.clip(1.0 - guide_mean / control_mean, 0.0, 1.0))
                    if control_mean > 0
                    else np.nan,
                    "p_value": float(mannwhitneyu(in_guide, in_control, alternative="less").pvalue),
                }
            )
    table = pd.DataFrame(rows, columns=list(EFFICIENCY_COLUMNS[:-2]))
    table = table.sort_values(["guide", "gene"], ignore_index=True)
    table["target_measured"] = table["target_measured"].astype(bool)
    tested = table["p_value"].notna()
    table["fdr"] = np.nan
    if tested.any():
        table.loc[tested, "fdr"] = false_discovery_control(table.loc[tested, "p_value"])
    table["efficient"] = (table["knockdown"] >= min_knockdown) & (table["fdr"] <= alpha)
    table.attrs = {
        "min_knockdown": min_knockdown,
        "alpha": alpha,
        "test": "Mann-Whitney U, one-sided (guide < control); fdr: Benjamini-Hochberg",
        "scale": "expm1 of X",
    }
    return table


def _block(dataset: PerturbationDataset, cells, genes: list[str]):
    """``X`` at ``cells`` × ``genes`` as stored: sparse stays sparse (column-major, for
    :func:`_normalised`), so no more than these cells and genes is ever read."""
    block = dataset.adata[np.asarray(cells), dataset.genes.get_indexer(genes)].X
    return sp.csc_matrix(block) if sp.issparse(block) else np.asarray(block)


def _normalised(block, column: int) -> np.ndarray:
    """``expm1`` of one column of a log1p block: dense ``(cells,)`` float64."""
    values = block[:, [column]].toarray() if sp.issparse(block) else block[:, [column]]
    return np.expm1(np.asarray(values, dtype=np.float64).ravel())

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
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from perturbflow.data.conditions import CONTROL_NAME

__all__ = ["GUIDE_MAP_KEY", "GuideError", "guide_conditions", "read_guide_map"]

GUIDE_MAP_KEY = "guide_map"  # in adata.uns["perturbflow"]
GENE_CONDITION_COLUMN = "perturbflow_gene_condition"


class GuideError(ValueError):
    """Guide names that cannot be turned into guide-level conditions."""


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

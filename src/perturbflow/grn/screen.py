"""Edges from perturbations: measured knock-outs (:func:`screen_edges`), a model's in-silico
perturbations (:func:`model_edges`), direct effects estimated jointly from every condition
(:func:`regression_edges`), and the removal of indirect edges (:func:`transitive_reduction`).

A perturbation of regulator ``R`` that moves gene ``T`` is evidence for ``R → T``. Its direction
depends on the perturbation: after a loss of function (knock-out, knock-down) a target that
drops was activated by ``R`` (sign ``-sign(effect)``); after a gain of function (CRISPRa) a
target that rises was activated (sign ``+sign(effect)``). A perturbation also moves the
targets of ``R``'s targets, so screen edges include indirect ones; :func:`transitive_reduction`
marks those explained by a stronger two-step path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.stats

from perturbflow.data.conditions import CONTROL_NAME, parse_condition
from perturbflow.data.io import PerturbationDataset, read
from perturbflow.grn.network import (
    EdgeTableError,
    GRNInputError,
    _preview,
    require_genes,
    validate_edges,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PERTURBATIONS",
    "benjamini_hochberg",
    "model_edges",
    "regression_edges",
    "screen_edges",
    "transitive_reduction",
]

# Sign of the regulation implied by a target's change, per kind of perturbation.
PERTURBATIONS: dict[str, int] = {"loss": -1, "gain": 1}
# Variance floor (log-expression units²): keeps Welch's t finite for a gene constant in both
# groups; a gene constant and equal in both gets t = 0.
_VARIANCE_FLOOR = 1e-8


def screen_edges(
    dataset: PerturbationDataset | ad.AnnData,
    *,
    regulators: Sequence[str] | None = None,
    perturbation: str = "loss",
    min_cells: int = 10,
) -> pd.DataFrame:
    """Regulator → target edges from single-gene perturbations compared with control cells.

    Regulators are the genes of single-gene perturbation conditions: by default every one whose
    gene is measured (a perturbed gene outside ``var`` is skipped, with a log line), or the
    given ``regulators`` (each must have a single-gene condition, measured or not; an unknown
    one raises :class:`~perturbflow.grn.network.UnknownRegulatorError`). A condition with fewer
    than ``min_cells`` cells is skipped with a warning, or raises when asked for by name.

    For every regulator and every measured gene other than the regulator itself, in the
    dataset's log-normalised expression:

    - ``effect``: mean(perturbed) − mean(control);
    - ``statistic``: Welch's t (unequal variances), ``pvalue`` two-sided with Welch–Satterthwaite
      degrees of freedom, ``fdr`` Benjamini–Hochberg over all tested pairs;
    - ``score`` = ``|statistic|``: it ranks pairs by the evidence for a change, comparable across
      targets of different expression and variability and across conditions with different cell
      numbers, where ``|effect|`` favours noisy genes and p-values tie at 0 for strong effects;
    - ``sign``: ``-sign(effect)`` for ``perturbation="loss"`` (knock-out, knock-down),
      ``+sign(effect)`` for ``"gain"`` (CRISPRa).

    Returns a long edges table (``source, target, score, sign, effect, statistic, pvalue, fdr,
    n_cells``), sorted by score (descending), then source and target; ``attrs["perturbflow"]``
    records the settings.
    """
    if isinstance(dataset, ad.AnnData):
        dataset = read(dataset)
    direction = _direction(perturbation)
    if isinstance(min_cells, bool) or not isinstance(min_cells, int | np.integer) or min_cells < 2:
        raise GRNInputError(f"min_cells must be an integer ≥ 2 (Welch's t), got {min_cells!r}")
    genes = pd.Index(dataset.genes)
    singles = {
        next(iter(genes_)): name
        for name in dataset.perturbations
        if len(genes_ := parse_condition(name)) == 1
    }
    counts = dataset.cells_per_condition
    n_control = int(counts.get(CONTROL_NAME, 0))
    if n_control < min_cells:
        raise GRNInputError(
            f"{dataset.source}: {n_control} control cells, fewer than min_cells={min_cells}; a "
            "screen needs control cells to compare with"
        )
    if regulators is None:
        chosen = sorted(gene for gene in singles if gene in genes)
        unmeasured = sorted(set(singles) - set(chosen))
        if unmeasured:
            logger.info(
                "%s: skipping %d single perturbation(s) of unmeasured genes (%s); name them in "
                "regulators= to test them",
                dataset.source,
                len(unmeasured),
                _preview(unmeasured, 5),
            )
        small = [gene for gene in chosen if counts[singles[gene]] < min_cells]
        if small:
            logger.warning(
                "%s: skipping %d regulator(s) with fewer than %d cells: %s",
                dataset.source,
                len(small),
                min_cells,
                ", ".join(f"{gene} ({counts[singles[gene]]})" for gene in small),
            )
            chosen = [gene for gene in chosen if gene not in small]
        if not chosen:
            raise GRNInputError(
                f"{dataset.source}: no single-gene perturbation of a measured gene with ≥ "
                f"{min_cells} cells; conditions: {_preview(dataset.perturbations)}"
            )
    else:
        chosen = require_genes(
            regulators,
            singles,
            what="regulator",
            where=f"the single-gene perturbations of {dataset.source}",
        )
        small = [gene for gene in chosen if counts[singles[gene]] < min_cells]
        if small:
            raise GRNInputError(
                f"{dataset.source}: regulator(s) with fewer than min_cells={min_cells} cells: "
                + ", ".join(f"{gene} ({counts[singles[gene]]})" for gene in small)
                + "; lower min_cells or leave them out"
            )

    control = dataset.control_expression().astype(np.float64)  # (n0, G)
    control_mean = control.mean(axis=0)  # (G,)
    control_var = control.var(axis=0, ddof=1)  # (G,)
    blocks = []
    for regulator in chosen:
        cells = dataset.expression(singles[regulator]).astype(np.float64)  # (n1, G)
        effect, statistic, pvalue = _welch(
            cells.mean(axis=0), cells.var(axis=0, ddof=1), len(cells),
            control_mean, control_var, len(control),
        )  # fmt: skip
        keep = genes != regulator  # (G,)
        blocks.append(
            pd.DataFrame(
                {
                    "source": regulator,
                    "target": genes[keep],
                    "effect": effect[keep],
                    "statistic": statistic[keep],
                    "pvalue": pvalue[keep],
                    "n_cells": len(cells),
                }
            )
        )
    edges = pd.concat(blocks, ignore_index=True)
    edges["fdr"] = benjamini_hochberg(edges["pvalue"].to_numpy())
    edges["score"] = np.abs(edges["statistic"].to_numpy())
    edges["sign"] = (direction * np.sign(edges["effect"].to_numpy())).astype(np.int8)
    edges = _ranked(edges)
    edges.attrs = {
        "perturbflow": {
            "method": "screen",
            "source": dataset.source,
            "perturbation": perturbation,
            "min_cells": int(min_cells),
            "n_control_cells": n_control,
            "regulators": list(chosen),
            "score": "|Welch t|",
        }
    }
    logger.info(
        "%s: tested %d regulators × %d targets; %d pairs at FDR ≤ 0.05",
        dataset.source,
        len(chosen),
        len(genes),
        int((edges["fdr"] <= 0.05).sum()),
    )
    return edges


def model_edges(
    model,
    regulators: Sequence[str],
    *,
    perturbation: str = "loss",
    background: Sequence[str] | None = None,
) -> pd.DataFrame:
    """In-silico edges from a fitted perturbflow model's ``predict_delta``.

    ``model.predict_delta([regulator, ...])`` gives the predicted mean expression change
    (conditions × genes) of perturbing each regulator alone; every gene other than the regulator
    becomes a target with ``effect`` = that change, ``score`` = ``|effect|`` and ``sign`` as in
    :func:`screen_edges` (``-sign(effect)`` for ``"loss"``, ``+sign(effect)`` for ``"gain"``).
    ``background`` (e.g. the training singles): conditions whose mean predicted change is
    subtracted first, so a target is scored by what this regulator changes beyond the response
    every perturbation shares (the Systema reference). Regulators must be single genes (``"A"``,
    not ``"A+B"``). Returns an edges table (``source, target, score, sign, effect``) sorted like
    :func:`screen_edges`'s.
    """
    direction = _direction(perturbation)
    names = [regulators] if isinstance(regulators, str) else list(regulators)
    if not names:
        raise GRNInputError("model_edges: no regulators given; name at least one gene")
    for name in names:
        if len(parse_condition(name)) != 1:
            raise GRNInputError(
                f"model_edges: regulator {name!r} is not a single gene; in-silico edges come "
                "from single-gene perturbations"
            )
    reference = list(background or [])
    deltas = model.predict_delta(names)  # (R, G)
    model_name = getattr(model, "name", type(model).__name__)
    if not isinstance(deltas, pd.DataFrame) or not set(names) <= set(deltas.index):
        raise GRNInputError(
            f"model {model_name!r}: predict_delta must return a DataFrame indexed by the "
            f"conditions {names}; got {type(deltas).__name__}"
        )
    if reference:
        shared = model.predict_delta(reference).to_numpy(np.float64).mean(axis=0)  # (G,)
        deltas = deltas - shared
    genes = pd.Index(deltas.columns.astype(str))
    blocks = []
    for regulator in dict.fromkeys(names):
        row = deltas.loc[regulator].to_numpy(dtype=np.float64)  # (G,)
        keep = genes != regulator
        blocks.append(
            pd.DataFrame({"source": regulator, "target": genes[keep], "effect": row[keep]})
        )
    edges = pd.concat(blocks, ignore_index=True)
    edges["score"] = np.abs(edges["effect"].to_numpy())
    edges["sign"] = (direction * np.sign(edges["effect"].to_numpy())).astype(np.int8)
    edges = _ranked(edges)
    edges.attrs = {
        "perturbflow": {
            "method": "model",
            "model": str(model_name),
            "perturbation": perturbation,
            "regulators": list(dict.fromkeys(names)),
            "score": "|predicted delta|"
            + (f" minus the mean of {len(reference)} background conditions" if reference else ""),
        }
    }
    return edges


def regression_edges(
    dataset: PerturbationDataset | ad.AnnData,
    *,
    regulators: Sequence[str] | None = None,
    alphas: Sequence[float] = tuple(np.logspace(-3, 3, 13)),
) -> pd.DataFrame:
    """Direct regulator → target effects from every condition at once (singles and combinations).

    Each condition's mean change from control is one observation; each target's change is
    regressed on the changes of the regulators (all but the target itself), without intercept
    (no regulator change, no target change), by ridge regression with the penalty chosen by
    leave-one-out cross-validation (``alphas``). Conditions that perturb the target itself are
    left out of its regression. A target that moves
    only because an intermediate regulator moved is explained by that intermediate, so indirect
    edges get small coefficients where :func:`screen_edges` scores every descendant of a
    knock-out. Regulators default to the measured genes of single-gene conditions, as in
    :func:`screen_edges`. ``effect`` is the coefficient, ``score`` its absolute value, ``sign``
    its sign (a coefficient relates the regulator's *expression* to the target's, so the kind of
    perturbation does not flip it).
    """
    from sklearn.linear_model import RidgeCV

    if isinstance(dataset, ad.AnnData):
        dataset = read(dataset)
    genes = pd.Index(dataset.genes.astype(str))
    singles = [c for c in dataset.conditions if len(parse_condition(c)) == 1]
    measured = [next(iter(parse_condition(c))) for c in singles]
    if regulators is None:
        names = sorted({g for g in measured if g in set(genes)})
    else:
        names = list(dict.fromkeys(regulators))
        require_genes(names, list(genes), what="regulator", where="the dataset's genes")
    if not names:
        raise GRNInputError(
            "regression_edges: no measured gene has a single-gene condition; regulators must be "
            "measured to enter the regression"
        )
    means = dataset.mean_expression()  # (conditions, G)
    deltas = means.drop(index=CONTROL_NAME, errors="ignore") - dataset.control_expression().mean(
        axis=0
    )  # (C, G)
    if len(deltas) < 3:
        raise GRNInputError(
            f"regression_edges needs at least 3 perturbed conditions, the dataset has {len(deltas)}"
        )
    perturbed = [parse_condition(name) for name in deltas.index]
    blocks = []
    for target in genes:
        sources = [name for name in names if name != target]
        # A condition that perturbs the target itself says nothing about its regulators.
        rows = np.array([target not in genes_hit for genes_hit in perturbed])  # (C,)
        design = deltas.loc[rows, sources].to_numpy(dtype=np.float64)  # (C', R)
        fitted = RidgeCV(alphas=list(alphas), fit_intercept=False).fit(
            design, deltas.loc[rows, target].to_numpy()
        )
        blocks.append(pd.DataFrame({"source": sources, "target": target, "effect": fitted.coef_}))
    edges = pd.concat(blocks, ignore_index=True)
    edges["score"] = np.abs(edges["effect"].to_numpy())
    edges["sign"] = np.sign(edges["effect"].to_numpy()).astype(np.int8)
    edges = _ranked(edges)
    edges.attrs = {
        "perturbflow": {
            "method": "regression",
            "regulators": names,
            "n_conditions": len(deltas),
            "score": "|ridge coefficient| of the target's change on the regulators' changes",
        }
    }
    return edges


def transitive_reduction(edges: pd.DataFrame, *, fdr: float = 0.05) -> pd.DataFrame:
    """Mark edges explained by a stronger two-step path.

    Significant edges are those with ``fdr`` ≤ the threshold. An edge ``A → C`` (significant or
    not) is **indirect** when some gene ``B`` (≠ A, C) has significant edges ``A → B`` and
    ``B → C`` with ``min(score(A→B), score(B→C)) ≥ score(A→C)``: the weaker link of the path is
    at least as strong as the direct edge, so the path alone can explain it. Every edge is judged
    against the original table (the result does not depend on row order), so a chain
    ``A → B → C`` keeps ``A → B`` and ``B → C`` and marks ``A → C``.

    Returns all edges, in their input order, with two columns added: ``indirect`` (bool) and
    ``via`` (the ``B`` with the strongest such path, ``""`` for direct edges); keep the reduced
    network with ``edges[~edges["indirect"]]``. Needs an ``fdr`` column (as
    :func:`screen_edges` gives).
    """
    if not 0 <= fdr <= 1:
        raise GRNInputError(f"fdr must lie in [0, 1], got {fdr!r}")
    if "fdr" not in edges.columns:
        raise EdgeTableError(
            f"transitive_reduction: edges have no column 'fdr' (found {list(edges.columns)}); "
            "significance decides which paths count: use screen_edges' output"
        )
    edges = validate_edges(edges, what="transitive_reduction edges")
    significant = edges[edges["fdr"].to_numpy() <= fdr]
    nodes = pd.Index(pd.unique(np.concatenate([edges["source"], edges["target"]])))
    sources = pd.Index(pd.unique(significant["source"]))
    strength = np.full((len(sources), len(nodes)), -np.inf)  # (S, N) significant scores
    strength[
        sources.get_indexer(significant["source"]), nodes.get_indexer(significant["target"])
    ] = significant["score"].to_numpy()
    # Rows of the intermediates B: B must itself be a source of significant edges.
    intermediate = nodes.get_indexer(sources)  # (S,) column of each source among the nodes
    indirect = np.zeros(len(edges), dtype=bool)
    via = np.full(len(edges), "", dtype=object)
    row_of = sources.get_indexer(edges["source"])  # (E,), -1 when A has no significant edge
    column_of = nodes.get_indexer(edges["target"])  # (E,)
    for a in np.unique(row_of[row_of >= 0]):
        # path[b, c] = min(score(A→B), score(B→C)); -inf when either edge is missing.
        path = np.minimum(strength[a, intermediate][:, None], strength)  # (S, N)
        path[a, :] = -np.inf  # B ≠ A
        path[np.arange(len(sources)), intermediate] = -np.inf  # B ≠ C
        best = path.argmax(axis=0)  # (N,)
        best_strength = path[best, np.arange(len(nodes))]  # (N,)
        rows = np.flatnonzero(row_of == a)
        columns = column_of[rows]
        hit = best_strength[columns] >= edges["score"].to_numpy()[rows]
        hit &= np.isfinite(best_strength[columns])
        indirect[rows[hit]] = True
        via[rows[hit]] = sources[best[columns[hit]]]
    result = edges.assign(indirect=indirect, via=via)
    logger.info(
        "transitive reduction (fdr ≤ %g): %d of %d edges explained by a stronger two-step path",
        fdr,
        int(indirect.sum()),
        len(edges),
    )
    return result


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (FDR) of ``pvalues`` ``(n,)``, same order.

    NaN p-values stay NaN and do not count among the tests.
    """
    pvalues = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(pvalues.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(pvalues))
    if tested.size == 0:
        return adjusted
    order = tested[np.argsort(pvalues[tested], kind="stable")]
    ranks = np.arange(1, order.size + 1)
    scaled = pvalues[order] * order.size / ranks  # (n,)
    adjusted[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return adjusted


def _welch(
    mean1: np.ndarray,
    var1: np.ndarray,
    n1: int,
    mean0: np.ndarray,
    var0: np.ndarray,
    n0: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Effect, Welch t and two-sided p-value per gene; every array ``(G,)``."""
    effect = mean1 - mean0
    a = np.maximum(var1, _VARIANCE_FLOOR) / n1
    b = np.maximum(var0, _VARIANCE_FLOOR) / n0
    statistic = effect / np.sqrt(a + b)
    dof = (a + b) ** 2 / (a**2 / (n1 - 1) + b**2 / (n0 - 1))
    pvalue = 2.0 * scipy.stats.t.sf(np.abs(statistic), dof)
    return effect, statistic, np.minimum(pvalue, 1.0)


def _direction(perturbation: str) -> int:
    if perturbation not in PERTURBATIONS:
        raise GRNInputError(
            f"perturbation must be one of {sorted(PERTURBATIONS)} ('loss': knock-out or "
            f"knock-down, 'gain': CRISPRa), got {perturbation!r}"
        )
    return PERTURBATIONS[perturbation]


def _ranked(edges: pd.DataFrame) -> pd.DataFrame:
    """Edges in the shared column order, by score (descending), then source and target."""
    first = [c for c in ("source", "target", "score", "sign", "effect", "statistic") if c in edges]
    first += [c for c in ("pvalue", "fdr") if c in edges]
    edges = edges[first + [c for c in edges.columns if c not in first]]
    return edges.sort_values(
        ["score", "source", "target"], ascending=[False, True, True], ignore_index=True
    )

"""Read and validate Perturb-seq data into a :class:`PerturbationDataset`.

Validation happens here, once; everything downstream trusts the dataset object. Errors name the
file, the column, the offending value and what to do about it.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.data.conditions import (
    CONTROL_NAME,
    DEFAULT_CONTROL_LABELS,
    ConditionError,
    ConditionParser,
    format_condition,
    genes_of,
)
from perturbflow.data.covariates import (
    CovariateError,
    composition_imbalance,
    match_controls,
    strata_labels,
)
from perturbflow.data.guides import (
    GENE_CONDITION_COLUMN,
    GUIDE_MAP_KEY,
    GuideError,
    guide_conditions,
    read_guide_map,
)
from perturbflow.data.messages import preview as _preview

logger = logging.getLogger(__name__)

CONDITION_COLUMN = "perturbflow_condition"
UNS_KEY = "perturbflow"
MATCHED_MEANS_KEY = "matched_control_mean"  # in adata.varm: (genes, strata + pooled)
# Labels (compared case-insensitively, after stripping) that mean "no perturbation assigned":
# guide-calling leftovers, not genes. Missing values and blank strings always count as unassigned.
UNASSIGNED_LABELS: tuple[str, ...] = (
    "nan",
    "none",
    "na",
    "n/a",
    "null",
    "unassigned",
    "multiplet",
    "doublet",
    "no_guide",
    "-",
)
# Counts-per-10k size factors need many genes; below this the totals are dominated by a few genes.
MIN_GENES_FOR_NORMALISATION = 1000
# log1p(CP10k) never exceeds log1p(1e4) ≈ 9.21; integer-valued data above this is surely counts.
_LOG_MAX = float(np.log1p(1e4)) + 1e-6
_CHUNK_ROWS = 5000
_MISSING = "<missing>"


class DataValidationError(ValueError):
    """User data does not meet perturbflow's expectations; the message says what to fix."""


class DataFileNotFoundError(DataValidationError, FileNotFoundError):
    """The given data file does not exist."""


class ControlCompositionWarning(UserWarning):
    """Control and perturbed cells differ in a recorded covariate and no key matches them."""


class SmallConditionWarning(UserWarning):
    """A condition has fewer cells than the requested minimum."""


@dataclass
class PerturbationDataset:
    """A validated Perturb-seq dataset: log-normalised AnnData plus parsed conditions.

    ``adata.obs[CONDITION_COLUMN]`` holds each cell's canonical condition name (``ctrl``, ``A``,
    ``A+B``); ``adata.var_names`` are gene symbols. Build it with :func:`read`.
    """

    adata: ad.AnnData
    source: str
    condition_key: str
    unmeasured_genes: frozenset[str] = field(default_factory=frozenset)
    cell_type_key: str | None = None
    # Condition means of a backed file, read once: its matrix is read-only on disk, and each
    # mean is a pass over that condition's rows of the file.
    _backed_means: dict[str, np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def genes(self) -> pd.Index:
        return self.adata.var_names

    @property
    def n_genes(self) -> int:
        return self.adata.n_vars

    @property
    def condition_labels(self) -> pd.Series:
        """Canonical condition name of every cell (index: obs_names)."""
        return self.adata.obs[CONDITION_COLUMN].astype(str)

    @property
    def conditions(self) -> list[str]:
        """Sorted canonical names of all conditions, control included."""
        coded = self._coded_labels()
        if coded is not None:
            codes, names = coded
            return sorted(names[np.bincount(codes[codes >= 0], minlength=len(names)) > 0])
        return sorted(self.condition_labels.unique())

    def _coded_labels(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Category codes ``(N,)`` and names of a categorical condition column, else None: one
        pass over integer codes instead of a string copy of every cell's label."""
        column = self.adata.obs[CONDITION_COLUMN]
        if not isinstance(column.dtype, pd.CategoricalDtype):
            return None
        return column.cat.codes.to_numpy(), column.cat.categories.astype(str).to_numpy(object)

    @property
    def perturbations(self) -> list[str]:
        """All conditions except control."""
        return [name for name in self.conditions if name != CONTROL_NAME]

    @property
    def guide_genes(self) -> dict[str, str]:
        """Guide → gene of a guide-level dataset (``read(..., guide_key=)``); empty otherwise."""
        return dict(self.adata.uns.get(UNS_KEY, {}).get(GUIDE_MAP_KEY, {}))

    @property
    def perturbed_genes(self) -> frozenset[str]:
        return frozenset(genes_of(self.perturbations))

    @property
    def cells_per_condition(self) -> pd.Series:
        return self.condition_labels.value_counts().sort_index()

    @property
    def normalization(self) -> str:
        return str(self.adata.uns.get(UNS_KEY, {}).get("normalization", "unknown"))

    def cell_mask(self, name: str | Sequence[str]) -> np.ndarray:
        names = [name] if isinstance(name, str) else list(name)
        coded = self._coded_labels()
        if coded is not None:
            codes, categories = coded
            present = np.bincount(codes[codes >= 0], minlength=len(categories)) > 0
            self._check_known(names, set(categories[present]))
            return np.isin(codes, np.flatnonzero(np.isin(categories, names)))
        labels = self.condition_labels
        self._check_known(names, set(labels.unique()))
        return labels.isin(names).to_numpy()

    def _check_known(self, names: list[str], known: set[str]) -> None:
        unknown = sorted(set(names) - known)
        if unknown:
            raise KeyError(
                f"condition(s) {unknown} not in dataset {self.source!r}; "
                f"known conditions: {_preview(self.conditions)}"
            )

    def _rows(self, mask: np.ndarray):
        """The cells of ``mask`` (boolean, or increasing row positions) as stored; an in-memory
        matrix is indexed directly (an AnnData view per call costs more than the rows of a small
        condition)."""
        if self.adata.isbacked or self.adata.is_view:
            return self.adata[mask].X
        return self.adata.X[np.flatnonzero(mask) if mask.dtype == bool else mask]

    def rows(self, positions: np.ndarray):
        """The cells at ``positions`` (increasing row numbers) as stored: sparse stays sparse."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (np.any(np.diff(positions) <= 0) or positions[0] < 0):
            raise ValueError("rows() needs increasing, non-negative row positions")
        matrix = self._rows(positions)
        return matrix if sp.issparse(matrix) else np.asarray(matrix)

    def expression(self, name: str | Sequence[str]) -> np.ndarray:
        """Dense ``(cells, genes)`` float32 expression of the cells of one or more conditions."""
        return _dense(self._rows(self.cell_mask(name)))

    def matrix(self, name: str | Sequence[str]):
        """The cells of one or more conditions as stored: a sparse matrix stays sparse (for
        statistics that never need a dense copy, e.g. gene correlations)."""
        matrix = self._rows(self.cell_mask(name))
        return matrix if sp.issparse(matrix) else np.asarray(matrix)

    def control_expression(self) -> np.ndarray:
        return self.expression(CONTROL_NAME)

    def mean_expression(self, names: Sequence[str] | None = None) -> pd.DataFrame:
        """Mean expression per condition: DataFrame ``(conditions, genes)``; sparse data are
        averaged without a dense copy."""
        names = self.conditions if names is None else list(names)
        cache = self._backed_means if self.adata.isbacked else {}
        missing = list(dict.fromkeys(name for name in names if name not in cache))
        means = {
            name: np.asarray(matrix.mean(axis=0), dtype=np.float32).ravel()
            for name, matrix in zip(missing, self._condition_matrices(missing), strict=True)
        }
        if self.adata.isbacked:
            cache.update(means)
        rows = [cache[name] if name in cache else means[name] for name in names]
        return pd.DataFrame(
            np.vstack(rows) if rows else np.zeros((0, self.n_genes), np.float32),
            index=names,
            columns=self.genes,
        )

    def variance_expression(self, names: Sequence[str] | None = None) -> pd.DataFrame:
        """Sample variance (``ddof=1``) of each gene per condition: DataFrame ``(conditions,
        genes)``, NaN for a condition of one cell; sparse data need no dense copy."""
        names = self.conditions if names is None else list(names)
        rows = []
        for matrix in self._condition_matrices(names):
            n = matrix.shape[0]
            if sp.issparse(matrix):
                matrix = matrix.astype(np.float64)  # one condition's cells; float32 sums drift
                mean = np.asarray(matrix.mean(axis=0)).ravel()
                square = np.asarray(matrix.multiply(matrix).mean(axis=0)).ravel()
                spread = np.maximum(square - mean**2, 0.0) * n  # sum of squared deviations
            else:
                dense = np.asarray(matrix, dtype=np.float64)
                spread = ((dense - dense.mean(axis=0)) ** 2).sum(axis=0)
            rows.append(spread / (n - 1) if n > 1 else np.full(self.n_genes, np.nan))
        return pd.DataFrame(
            np.vstack(rows) if rows else np.zeros((0, self.n_genes)),
            index=names,
            columns=self.genes,
        )

    def _condition_matrices(self, names: list[str]):
        """The stored cells of each of ``names`` in turn, grouping the labels once: one pass
        over the category codes instead of a mask per condition."""
        coded = self._coded_labels()
        if coded is None or self.adata.isbacked or self.adata.is_view:
            for name in names:
                yield self.matrix(name)
            return
        codes, categories = coded
        counts = np.bincount(codes[codes >= 0], minlength=len(categories))
        self._check_known(names, set(categories[counts > 0]))
        position = {str(category): index for index, category in enumerate(categories)}
        order = np.argsort(codes, kind="stable")  # cells grouped by code, in file order within
        ends = np.cumsum(counts)
        skip = int(np.sum(codes < 0))  # unlabelled cells (code -1) sort first
        matrix = self.adata.X
        for name in names:
            code = position[name]
            rows = order[skip + ends[code] - counts[code] : skip + ends[code]]
            block = matrix[rows]
            yield block if sp.issparse(block) else np.asarray(block)

    def subset(self, names: Sequence[str]) -> PerturbationDataset:
        """A dataset holding only the cells of ``names`` (loaded into memory)."""
        view = self.adata[self.cell_mask(names)]
        adata = view.to_memory() if self.adata.isbacked else view.copy()
        adata.obs[CONDITION_COLUMN] = adata.obs[CONDITION_COLUMN].astype(str).astype("category")
        return PerturbationDataset(
            adata=adata,
            source=self.source,
            condition_key=self.condition_key,
            unmeasured_genes=self.unmeasured_genes,
            cell_type_key=self.cell_type_key,
        )

    def __repr__(self) -> str:
        return (
            f"PerturbationDataset({self.adata.n_obs} cells × {self.n_genes} genes, "
            f"{len(self.perturbations)} perturbations, source={self.source!r}, "
            f"normalization={self.normalization!r})"
        )


@dataclass(frozen=True)
class ReadOptions:
    """How to read a user's file; every field is an argument of :func:`read` (the CLI's
    ``--condition-key``, ``--control``, ``--gene-key``, ``--separator``, ``--cell-type-key``,
    ``--unassigned``, ``--keep-unassigned``, ``--layer``, ``--context-key``, ``--batch-key``,
    ``--guide-key``, ``--guide-map``, ``--backed``)."""

    condition_key: str = "condition"
    control: str | Sequence[str] | None = None
    gene_key: str | None = None
    separator: str = "+"
    cell_type_key: str | None = None
    unassigned: Sequence[str] = UNASSIGNED_LABELS
    keep_unassigned: bool = False
    layer: str | None = None
    context_key: str | None = None
    batch_key: str | None = None
    guide_key: str | None = None
    guide_map: str | None = None
    backed: bool = False

    def read(self, source: str | Path | ad.AnnData) -> PerturbationDataset:
        return read(
            source,
            condition_key=self.condition_key,
            control=self.control,
            gene_key=self.gene_key,
            separator=self.separator,
            cell_type_key=self.cell_type_key,
            unassigned=self.unassigned,
            keep_unassigned=self.keep_unassigned,
            layer=self.layer,
            context_key=self.context_key,
            batch_key=self.batch_key,
            guide_key=self.guide_key,
            guide_map=self.guide_map,
            backed=self.backed,
        )


def read(
    source: str | Path | ad.AnnData,
    *,
    condition_key: str = "condition",
    control: str | Sequence[str] | None = None,
    gene_key: str | None = None,
    separator: str = "+",
    cell_type_key: str | None = None,
    min_cells: int = 10,
    backed: bool = False,
    unassigned: Sequence[str] = UNASSIGNED_LABELS,
    keep_unassigned: bool = False,
    layer: str | None = None,
    context_key: str | None = None,
    batch_key: str | None = None,
    guide_key: str | None = None,
    guide_map: str | Path | Mapping[str, str] | None = None,
) -> PerturbationDataset:
    """Read a Perturb-seq dataset from an ``.h5ad`` file or an in-memory AnnData.

    Parameters
    ----------
    source
        Path to an ``.h5ad`` file, or an AnnData (copied: the caller's object is never modified).
    condition_key
        ``obs`` column naming each cell's perturbation (``ctrl``, ``A``, ``A+B``, ...).
    control
        Label(s) of control cells; default accepts ``ctrl``, ``control`` and ``non-targeting``.
    gene_key
        ``var`` column holding gene symbols; default uses ``var_names``.
    separator
        Separator of genes in combination labels (``+`` for GEARS, ``_`` for some scPerturb files).
    cell_type_key
        Optional ``obs`` column with the cell line / context.
    min_cells
        Conditions with fewer cells trigger a :class:`SmallConditionWarning`.
    backed
        Open an ``.h5ad`` in backed (read-only, on-disk) mode. Raw counts, a ``layer`` and any
        dropped cells make the data load into memory.
    unassigned
        Labels meaning "no perturbation assigned", compared case-insensitively, whole labels or
        genes of a combination (``A+nan``). Default :data:`UNASSIGNED_LABELS`; extend it with
        ``(*UNASSIGNED_LABELS, "my_label")`` or pass ``()`` to treat every non-blank label as a
        condition. Missing values and blank strings are always unassigned; control labels never.
    keep_unassigned
        Refuse (raise :class:`DataValidationError`) instead of dropping unassigned cells.
    layer
        Read ``adata.layers[layer]`` instead of ``X``; it replaces ``X`` in the dataset.
    context_key, batch_key
        ``obs`` columns of each cell's context (cell line, stimulation, donor) and batch. When
        given, every cell is compared with control cells of its own context/batch
        (:mod:`perturbflow.data.covariates`: ``X`` moves by each stratum's control mean, so
        deltas, DE genes, metrics, the ceiling and training pairs are all matched). Each value
        needs control cells. ``context_key`` is also the dataset's ``cell_type_key`` (the column a
        context split holds out) unless ``cell_type_key`` is given. Without either key, a
        :class:`ControlCompositionWarning` names any recorded covariate whose mix differs
        between control and perturbed cells.
    guide_key, guide_map
        Guide-level conditions (:mod:`perturbflow.data.guides`): ``obs[guide_key]`` names each
        cell's guide, which becomes its condition; ``condition_key`` still names its gene. The
        guide → gene map is ``guide_map`` (a mapping or a CSV/TSV of guide, gene) or, without
        it, read from the cells.

    Cells without an assigned perturbation and cells with zero total expression are dropped, each
    with a WARNING that counts them. Raw counts (non-negative integers) are normalised to log1p
    counts-per-10k; log-normalised data are used as provided. ``adata.uns["perturbflow"]``
    records the matrix read (``layer``: a layer name or ``"X"``), the normalisation and the
    number of dropped cells.
    """
    if cell_type_key is None:
        cell_type_key = context_key
    adata, where = _load(source, backed)
    labels = _control_labels(control)
    parser = ConditionParser(separator=separator, control_labels=labels)

    adata = _set_gene_symbols(adata, gene_key, where)
    if condition_key not in adata.obs.columns:
        raise DataValidationError(
            f"{where}: obs has no column {condition_key!r}{_suggest(condition_key, adata.obs.columns)}"
            f"; available columns: {_preview(adata.obs.columns)}. Pass condition_key=<column>."
        )
    for key, what in ((context_key, "context"), (batch_key, "batch"), (guide_key, "guide")):
        if key is not None and key not in adata.obs.columns:
            raise DataValidationError(
                f"{where}: obs has no {what} column {key!r}{_suggest(key, adata.obs.columns)}; "
                f"available: {_preview(adata.obs.columns)}"
            )
    if cell_type_key is not None and cell_type_key not in adata.obs.columns:
        raise DataValidationError(
            f"{where}: obs has no cell-type column {cell_type_key!r}"
            f"{_suggest(cell_type_key, adata.obs.columns)}; available: {_preview(adata.obs.columns)}"
        )
    adata, matrix = _select_matrix(adata, layer, where)
    _check_dtype(adata.X, where, matrix)
    adata = _unique_cell_names(adata, where)

    column = adata.obs[condition_key]
    no_perturbation = _unassigned_mask(column, parser, unassigned)
    if keep_unassigned and no_perturbation.any():
        raise DataValidationError(
            f"{where}: obs[{condition_key!r}] assigns no perturbation to "
            f"{int(no_perturbation.sum())} of {len(column)} cells, labelled "
            f"{_label_counts(column[no_perturbation])}; relabel them (control cells with the "
            "control label, guides with their target gene) or drop keep_unassigned=True to let "
            "read() drop them"
        )
    canonical = _parse_conditions(column[~no_perturbation], parser, where, condition_key)

    stats = _value_stats(adata.X)
    _check_values(stats, where, matrix)
    empty = stats["row_totals"] == 0  # (cells,)
    if no_perturbation.any():
        logger.warning(
            "%s: dropped %d of %d cells with no perturbation assigned in obs[%r]: %s "
            "(unassigned= sets which labels mean this)",
            where,
            int(no_perturbation.sum()),
            len(column),
            condition_key,
            _label_counts(column[no_perturbation]),
        )
    empty_assigned = empty[~no_perturbation]  # (assigned cells,)
    if empty_assigned.any():
        logger.warning(
            "%s: dropped %d of %d cells with zero total counts in %s (first: %s)",
            where,
            int(empty_assigned.sum()),
            len(empty_assigned),
            matrix,
            _preview(adata.obs_names[~no_perturbation][empty_assigned], limit=3),
        )
    keep = ~no_perturbation & ~empty  # (cells,)
    if not keep.any():
        raise DataValidationError(
            f"{where}: no cells left after dropping {int(no_perturbation.sum())} unassigned and "
            f"{int(empty_assigned.sum())} zero-count cell(s); check obs[{condition_key!r}] and "
            f"{matrix}"
        )
    if not keep.all():
        adata = _take_cells(adata, keep, where)
        canonical = canonical[~empty_assigned]
    if not (canonical == CONTROL_NAME).any():
        raise DataValidationError(_no_control_message(adata.obs[condition_key], labels, where))

    guide_genes = None
    if guide_key is not None:
        try:
            guide_labels, guide_genes = guide_conditions(
                adata.obs[guide_key],
                pd.Series(canonical, index=adata.obs_names),
                where,
                read_guide_map(guide_map) if guide_map is not None else None,
                separator,
            )
        except GuideError as error:
            raise DataValidationError(str(error)) from error
        adata.obs[GENE_CONDITION_COLUMN] = pd.Categorical(canonical)
        canonical = guide_labels.to_numpy(dtype=str)
    adata.obs[CONDITION_COLUMN] = pd.Categorical(canonical)
    adata = _normalise_if_counts(adata, stats, where, matrix)
    adata.uns[UNS_KEY] = {
        **adata.uns[UNS_KEY],
        "layer": "X" if layer is None else layer,
        "dropped_unassigned": int(no_perturbation.sum()),
        "dropped_zero_counts": int(empty_assigned.sum()),
        **({GUIDE_MAP_KEY: guide_genes, "guide_key": guide_key} if guide_genes else {}),
    }

    adata = _match_or_warn(adata, condition_key, (context_key, batch_key), cell_type_key, where)

    # Measured or not is a question about genes, also at guide level.
    gene_level = set(adata.obs[GENE_CONDITION_COLUMN]) if guide_genes else set(canonical)
    unmeasured = frozenset(genes_of(gene_level) - set(adata.var_names))
    _refuse_ids_for_symbols(adata, unmeasured, gene_level, where)
    if unmeasured:
        logger.warning(
            "%s: %d perturbed gene(s) are not measured in var (allowed, e.g. CRISPRa targets): %s",
            where,
            len(unmeasured),
            _preview(sorted(unmeasured)),
        )
    counts = pd.Series(canonical).value_counts()
    small = counts[counts < min_cells].sort_index()
    if len(small):
        warnings.warn(
            f"{where}: {len(small)} condition(s) have fewer than {min_cells} cells: "
            + ", ".join(f"{name} ({n})" for name, n in small.items()),
            SmallConditionWarning,
            stacklevel=2,
        )
    return PerturbationDataset(
        adata=adata,
        source=where,
        condition_key=condition_key,
        unmeasured_genes=unmeasured,
        cell_type_key=cell_type_key,
    )


def _load(source: str | Path | ad.AnnData, backed: bool) -> tuple[ad.AnnData, str]:
    if isinstance(source, ad.AnnData):
        adata = source.to_memory() if source.isbacked else source.copy()
        return adata, "<AnnData>"
    path = Path(source)
    where = str(path)
    if not path.exists():
        raise DataFileNotFoundError(f"{where}: file not found; check the path")
    if path.is_dir():
        raise DataValidationError(f"{where}: is a folder; give the path to an .h5ad file")
    if path.suffix != ".h5ad":
        raise DataValidationError(
            f"{where}: unsupported file type {path.suffix!r}; perturbflow reads .h5ad files "
            "(convert with anndata / scanpy first)"
        )
    try:
        adata = ad.read_h5ad(path, backed="r" if backed else None)
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise DataValidationError(
            f"{where}: cannot be read as an .h5ad file ({type(error).__name__}: {error}); "
            "is it complete and written by anndata?"
        ) from error
    if backed:
        # Detach obs/var from the file so that adding columns never writes to the user's file.
        adata.obs = adata.obs.copy()
        adata.var = adata.var.copy()
    return adata, where


def _into_memory(adata: ad.AnnData, where: str, why: str, load: bool = True) -> ad.AnnData:
    """``adata`` in memory; a backed file says so, since its matrix may not fit."""
    if not adata.isbacked:
        return adata
    logger.warning(
        "%s: %s loads the matrix into memory; backed mode reads the file in place only when X "
        "is log-normalised, every cell is kept and cell names are unique",
        where,
        why,
    )
    return adata.to_memory() if load else adata


def _control_labels(control: str | Sequence[str] | None) -> tuple[str, ...]:
    if control is None:
        return DEFAULT_CONTROL_LABELS
    return (control,) if isinstance(control, str) else tuple(control)


def _set_gene_symbols(adata: ad.AnnData, gene_key: str | None, where: str) -> ad.AnnData:
    if gene_key is not None:
        if gene_key not in adata.var.columns:
            raise DataValidationError(
                f"{where}: var has no column {gene_key!r}{_suggest(gene_key, adata.var.columns)}; "
                f"available columns: {_preview(adata.var.columns)}. Pass gene_key=<column> or "
                "None to use var_names."
            )
        symbols = adata.var[gene_key]
        if symbols.isna().any():
            raise DataValidationError(
                f"{where}: var[{gene_key!r}] has {int(symbols.isna().sum())} missing gene symbol(s)"
            )
        adata.var_names = pd.Index(symbols.astype(str), name=None)
    duplicated = adata.var_names[adata.var_names.duplicated()].unique()
    if len(duplicated):
        source = f"var[{gene_key!r}]" if gene_key else "var_names"
        raise DataValidationError(
            f"{where}: {len(duplicated)} duplicate gene name(s) in {source}: "
            f"{_preview(list(duplicated))}. Remove or merge duplicates (e.g. adata.var_names_make_unique()"
            ") or choose another gene_key."
        )
    return adata


def _select_matrix(adata: ad.AnnData, layer: str | None, where: str) -> tuple[ad.AnnData, str]:
    """Put the matrix to read in ``X``; return the AnnData and the matrix's name for messages."""
    available = list(adata.layers.keys())
    layers_hint = (
        f"available layers: {_preview(available)}" if available else "the file has no layers"
    )
    if layer is None:
        if adata.X is None:
            raise DataValidationError(
                f"{where}: X is empty; pass layer=<name> to read a layer ({layers_hint})"
            )
        return adata, "X"
    if layer not in adata.layers:
        raise DataValidationError(
            f"{where}: layers has no {layer!r}{_suggest(layer, available)}; {layers_hint}. "
            + ("Pass one of them as layer=, or omit " if available else "Omit ")
            + "layer= to read X."
        )
    # Replacing X of a backed AnnData would write to the user's file.
    adata = _into_memory(adata, where, f"reading layer {layer!r}")
    adata.X = adata.layers[layer]
    return adata, f"layers[{layer!r}]"


def _unassigned_mask(
    column: pd.Series, parser: ConditionParser, unassigned: Sequence[str]
) -> np.ndarray:
    """``(cells,)`` True where the label assigns no perturbation (missing, blank or unassigned).

    A combination naming an unassigned label (``A+nan``) counts too: its other guide is unknown.
    Control labels are never unassigned, so an explicit ``control="none"`` wins.
    """
    values = column.astype(object)
    lowered = {str(label).strip().lower() for label in unassigned}
    lowered = {label for label in lowered if label and not parser.is_control_label(label)}
    verdict: dict[object, bool] = {}
    for label in pd.unique(values.dropna()):
        text = str(label).strip()
        tokens = text.split(parser.separator) if parser.separator in text else []
        verdict[label] = (
            not text
            or text.lower() in lowered
            or any(token.strip().lower() in lowered for token in tokens)
        )
    return (values.isna() | values.map(verdict).eq(True)).to_numpy()


def _label_counts(column: pd.Series) -> str:
    """``'nan' (16), <missing> (4), '' (2)``: the distinct labels of ``column`` with their counts."""
    counts: dict[str, int] = {}
    for label, n in column.astype(object).value_counts(dropna=False).items():
        shown = _MISSING if pd.isna(label) else repr(str(label))
        counts[shown] = counts.get(shown, 0) + int(n)
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    return _preview(f"{label} ({n})" for label, n in ranked)


def _take_cells(adata: ad.AnnData, keep: np.ndarray, where: str) -> ad.AnnData:
    """The cells of ``keep`` as an in-memory AnnData, unused categories removed."""
    if adata.isbacked:
        _into_memory(adata, where, "dropping cells", load=False)
        adata = adata[keep].to_memory()
    else:
        adata = adata[keep].copy()
    for name, values in adata.obs.items():
        if isinstance(values.dtype, pd.CategoricalDtype):
            adata.obs[name] = values.cat.remove_unused_categories()
    return adata


def _parse_conditions(
    values: pd.Series, parser: ConditionParser, where: str, condition_key: str
) -> np.ndarray:
    """Canonical condition name of every (assigned) cell: ``(cells,)`` str."""
    values = values.astype(object)
    names: dict[object, str] = {}
    for label in pd.unique(values):
        try:
            names[label] = format_condition(parser.parse(str(label)))
        except ConditionError as error:
            raise DataValidationError(
                f"{where}: obs[{condition_key!r}] value {label!r} is not a valid condition: {error}"
            ) from error
    return values.map(names).to_numpy(dtype=object).astype(str)


def match_control_cells(
    dataset: PerturbationDataset, *, context_key: str | None = None, batch_key: str | None = None
) -> PerturbationDataset:
    """A copy of a read ``dataset`` whose cells are compared with control cells of their own
    context/batch, as ``read(..., context_key=, batch_key=)`` does (for registered datasets,
    which are read for you)."""
    if context_key is None and batch_key is None:
        raise DataValidationError("match_control_cells needs context_key and/or batch_key")
    source = dataset.adata.to_memory() if dataset.adata.isbacked else dataset.adata.copy()
    adata = _match_or_warn(
        source, dataset.condition_key, (context_key, batch_key), None, dataset.source
    )
    return dataclasses.replace(
        dataset,
        adata=adata,
        cell_type_key=dataset.cell_type_key if dataset.cell_type_key else context_key,
    )


def _match_or_warn(
    adata: ad.AnnData,
    condition_key: str,
    keys: tuple[str | None, ...],
    cell_type_key: str | None,
    where: str,
) -> ad.AnnData:
    """Match control cells by the given covariate keys, or warn about unmatched imbalance."""
    keys = tuple(key for key in keys if key is not None)
    is_control = (adata.obs[CONDITION_COLUMN] == CONTROL_NAME).to_numpy()
    if not keys:
        exclude = (condition_key, CONDITION_COLUMN, *((cell_type_key,) if cell_type_key else ()))
        for imbalance in composition_imbalance(
            adata.obs, is_control, adata.obs[CONDITION_COLUMN], exclude=exclude
        ):
            warnings.warn(
                f"{where}: control and perturbed cells come from different mixes of "
                f"obs[{imbalance.column!r}] ({imbalance.describe()}; total variation "
                f"{imbalance.distance:.2f}), so every delta also carries that difference; pass "
                f"context_key={imbalance.column!r} (CLI: --context-key {imbalance.column}) to "
                "compare each perturbed cell with control cells of its own "
                f"{imbalance.column}",
                ControlCompositionWarning,
                stacklevel=3,
            )
        return adata
    try:
        strata = strata_labels(adata.obs, keys, where)
        adata = _into_memory(adata, where, "matching control cells by context")
        matched, means = match_controls(_dense(adata.X), strata, is_control, where)
    except CovariateError as error:
        raise DataValidationError(str(error)) from error
    adata.X = matched
    adata.varm[MATCHED_MEANS_KEY] = pd.DataFrame(
        means.to_numpy().T, index=adata.var_names, columns=means.index.astype(str)
    )
    counts = pd.Series(strata.to_numpy()[is_control]).value_counts().sort_index()
    adata.uns[UNS_KEY] = {
        **adata.uns[UNS_KEY],
        "control_matching": {
            "keys": list(keys),
            "n_control_cells": {str(k): int(v) for k, v in counts.items()},
            "control_means": f"varm[{MATCHED_MEANS_KEY!r}]",
        },
    }
    logger.info(
        "%s: matched control cells by %s (%d strata; control cells per stratum: %s)",
        where,
        " and ".join(keys),
        len(counts),
        dict(counts),
    )
    return adata


def _no_control_message(column: pd.Series, labels: tuple[str, ...], where: str) -> str:
    counts = column.astype(str).value_counts()
    candidates = list(counts.index)
    lowered = {c.lower(): c for c in candidates}
    close: list[str] = []
    for label in labels:
        close += [
            lowered[m] for m in difflib.get_close_matches(label.lower(), lowered, n=3, cutoff=0.6)
        ]
    hints = ("ctrl", "control", "non-target", "nontarget", "ntc", "scrambl", "safe")
    close += [c for c in candidates if any(h in c.lower() for h in hints)]
    close = list(dict.fromkeys(close))
    message = f"{where}: no control cells: no condition label equals {list(labels)}"
    if close:
        message += f". Did you mean {close[0]!r}? Pass control={close[0]!r}"
    return message + f". Most frequent labels: {_preview(candidates)}"


def _check_dtype(matrix, where: str, matrix_name: str) -> None:
    """Expression must be real numbers (integer counts or floats); bool counts as 0/1."""
    dtype = np.dtype(matrix.dtype)
    if dtype.kind not in "biuf":
        raise DataValidationError(
            f"{where}: {matrix_name} has dtype {dtype}; perturbflow expects integer counts or "
            "real-valued (float) expression. Convert it, e.g. adata.X = adata.X.astype('float32')"
            + (" after taking the real part" if dtype.kind == "c" else "")
        )


def _unique_cell_names(adata: ad.AnnData, where: str) -> ad.AnnData:
    """Duplicated cell names (e.g. barcodes of concatenated lanes) made unique, with a warning:
    perturbflow identifies cells by position, but AnnData indexing by name needs unique names."""
    duplicated = adata.obs_names[adata.obs_names.duplicated()].unique()
    if len(duplicated):
        logger.warning(
            "%s: %d cell name(s) occur more than once in obs_names (first: %s); made unique by "
            "appending -1, -2, … (anndata's obs_names_make_unique)",
            where,
            len(duplicated),
            _preview(duplicated, limit=3),
        )
        adata = _into_memory(adata, where, "making cell names unique")
        adata.obs_names_make_unique()
    return adata


_ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


def _refuse_ids_for_symbols(
    adata: ad.AnnData, unmeasured: frozenset[str], conditions: set[str], where: str
) -> None:
    """Genes measured as Ensembl ids while conditions name symbols match nothing: every perturbed
    gene would count as unmeasured. Refuse with the way out (gene_key) instead."""
    perturbed = genes_of(conditions)
    if not perturbed or unmeasured != perturbed:
        return
    names = pd.Index(adata.var_names.astype(str))
    if names.str.match(_ENSEMBL_ID).mean() < 0.5 or all(_ENSEMBL_ID.match(g) for g in perturbed):
        return
    symbol_columns = [
        str(name) for name, values in adata.var.items() if values.astype(str).isin(perturbed).any()
    ]
    hint = (
        f"var column(s) {symbol_columns} hold the perturbed genes: pass gene_key={symbol_columns[0]!r}"
        if symbol_columns
        else f"pass gene_key=<var column of gene symbols> (var columns: {_preview(adata.var.columns)})"
    )
    raise DataValidationError(
        f"{where}: var_names are Ensembl ids (e.g. {names[0]}) but the conditions name gene "
        f"symbols (e.g. {sorted(perturbed)[0]}), so none of the {len(perturbed)} perturbed genes "
        f"is measured; {hint}"
    )


def _check_values(stats: dict, where: str, matrix: str) -> None:
    if stats["n_nan"] or stats["n_inf"]:
        raise DataValidationError(
            f"{where}: {matrix} has {stats['n_nan']} NaN and {stats['n_inf']} infinite value(s); "
            "remove or impute them before reading"
        )
    if stats["n_negative"]:
        raise DataValidationError(
            f"{where}: {matrix} has {stats['n_negative']} negative value(s) "
            f"(minimum {stats['min']:.3g}); perturbflow expects raw counts or log1p-normalised "
            "expression, not scaled/centred data"
        )


def _normalise_if_counts(adata: ad.AnnData, stats: dict, where: str, matrix: str) -> ad.AnnData:
    info = dict(adata.uns.get(UNS_KEY, {}))
    if stats["all_integer"] and stats["max"] > 0:
        logger.info("%s: %s holds raw counts; normalising to log1p counts-per-10k", where, matrix)
        if adata.n_vars < MIN_GENES_FOR_NORMALISATION:
            available = list(adata.layers.keys())
            logger.warning(
                "%s: %s holds raw counts of only %d genes; counts-per-10k size factors over fewer "
                "than %d genes are unreliable. If the file has its own log-normalised layer, read "
                "it with layer=<name> (%s)",
                where,
                matrix,
                adata.n_vars,
                MIN_GENES_FOR_NORMALISATION,
                f"available layers: {_preview(available)}" if available else "it has no layers",
            )
        adata = _into_memory(adata, where, "normalising raw counts")
        counts = sp.csr_matrix(adata.X, dtype=np.float32) if sp.issparse(adata.X) else None
        adata.layers["counts"] = counts if counts is not None else np.asarray(adata.X).copy()
        adata.X = _log1p_cp10k(adata.X)
        info.update(normalization="log1p_cp10k", normalized_from="raw counts", target_sum=1e4)
    else:
        if stats["max"] > _LOG_MAX + 5:
            logger.warning(
                "%s: %s reaches %.3g, large for log1p CP10k data; check it is log-normalised",
                where,
                matrix,
                stats["max"],
            )
        info.setdefault("normalization", "log1p (as provided)")
    adata.uns[UNS_KEY] = info
    return adata


def _value_stats(matrix) -> dict:
    """NaN/inf/negative counts, min/max, integrality and ``row_totals`` ``(cells,)``, read in row
    chunks (works backed)."""
    stats = {"n_nan": 0, "n_inf": 0, "n_negative": 0, "min": np.inf, "max": -np.inf}
    all_integer = True
    totals = []
    for start in range(0, matrix.shape[0], _CHUNK_ROWS):
        block = matrix[start : start + _CHUNK_ROWS]
        # Summed as float64: an integer sum of huge counts wraps around (to 0 or below) silently.
        if sp.issparse(block):
            row_sums = block.astype(np.float64).sum(axis=1)
        else:
            row_sums = np.asarray(block).sum(axis=1, dtype=np.float64)
        totals.append(np.asarray(row_sums).ravel())  # (chunk,)
        values = block.data if sp.issparse(block) else np.asarray(block).ravel()
        values = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(values)
        stats["n_nan"] += int(np.isnan(values).sum())
        stats["n_inf"] += int(np.isinf(values).sum())
        values = values[finite]
        if values.size:
            stats["n_negative"] += int((values < 0).sum())
            stats["min"] = min(stats["min"], float(values.min()))
            stats["max"] = max(stats["max"], float(values.max()))
            all_integer = all_integer and bool(np.all(values == np.round(values)))
    stats["all_integer"] = all_integer
    stats["row_totals"] = np.concatenate(totals) if totals else np.zeros(0)
    return stats


def _log1p_cp10k(matrix):
    if sp.issparse(matrix):
        matrix = sp.csr_matrix(matrix, dtype=np.float32)
        totals = np.asarray(matrix.sum(axis=1)).ravel()
        scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
        normalised = sp.diags(scale.astype(np.float32)) @ matrix
        normalised.data = np.log1p(normalised.data)
        return normalised.tocsr()
    dense = np.asarray(matrix, dtype=np.float32)
    totals = dense.sum(axis=1, keepdims=True)
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(dense * scale)


def _dense(matrix) -> np.ndarray:
    if sp.issparse(matrix):
        return matrix.toarray().astype(np.float32, copy=False)
    if hasattr(matrix, "to_memory"):
        matrix = matrix.to_memory()
    return np.asarray(matrix, dtype=np.float32)


def _suggest(name: str, options) -> str:
    match = difflib.get_close_matches(name, [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""

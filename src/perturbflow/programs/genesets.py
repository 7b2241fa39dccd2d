"""Gene-set (pathway) files: read GMT, turn sets into a gene × set membership table."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


class GeneSetFormatError(ValueError):
    """A gene-set file or mapping is malformed; the message names the file and line."""


class GeneSetFileNotFoundError(GeneSetFormatError, FileNotFoundError):
    """The given gene-set file does not exist."""


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Read a GMT file into ``{set name: [genes]}``, in file order.

    Each non-blank line is ``name<TAB>description<TAB>gene<TAB>gene…``. Empty fields (trailing
    tabs) are ignored and duplicate genes within a set are dropped, keeping the first. A line
    without a name or without any gene, or a set name seen twice, raises
    :class:`GeneSetFormatError` naming the file and line number.
    """
    path = Path(path)
    if not path.is_file():
        raise GeneSetFileNotFoundError(
            f"gene-set file {str(path)!r} does not exist; pass the path of a .gmt file"
        )
    gene_sets: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = [field.strip() for field in line.rstrip("\r\n").split("\t")]
            name = fields[0]
            genes = list(dict.fromkeys(gene for gene in fields[2:] if gene))
            if not name or not genes:
                raise GeneSetFormatError(
                    f"{path}, line {line_number}: expected 'name<TAB>description<TAB>gene…' "
                    f"with a set name and at least one gene, got {line.strip()[:80]!r}"
                )
            if name in gene_sets:
                raise GeneSetFormatError(
                    f"{path}, line {line_number}: gene set {name!r} already defined on line "
                    f"{first_line[name]}; set names must be unique"
                )
            gene_sets[name] = genes
            first_line[name] = line_number
    if not gene_sets:
        raise GeneSetFormatError(f"{path} holds no gene sets")
    logger.info("read %d gene sets from %s", len(gene_sets), path)
    return gene_sets


def gene_sets_to_membership(
    gene_sets: Mapping[str, Sequence[str] | set[str]],
    genes: Sequence[str],
    min_size: int = 5,
    max_size: int | None = None,
) -> pd.DataFrame:
    """Boolean membership table ``(genes, sets)`` restricted to ``genes``.

    Only genes in ``genes`` count towards a set's size; sets with fewer than ``min_size`` (or
    more than ``max_size``) such genes are dropped. Rows follow ``genes``; columns keep the order
    of ``gene_sets``. Raises :class:`GeneSetFormatError` when no set survives.
    """
    gene_index = _gene_positions(genes)
    if min_size < 1:
        raise ValueError(f"min_size must be at least 1, got {min_size}")
    if max_size is not None and max_size < min_size:
        raise ValueError(f"max_size ({max_size}) must be at least min_size ({min_size})")
    columns: dict[str, np.ndarray] = {}
    for name, members in gene_sets.items():
        rows = sorted({gene_index[gene] for gene in members if gene in gene_index})
        if len(rows) < min_size or (max_size is not None and len(rows) > max_size):
            continue
        column = np.zeros(len(gene_index), dtype=bool)  # (G,)
        column[rows] = True
        columns[str(name)] = column
    if not columns:
        raise GeneSetFormatError(
            f"none of the {len(gene_sets)} gene sets has at least {min_size} of the "
            f"{len(gene_index)} genes (sizes counted after matching gene symbols); check that "
            "the gene sets use the same gene symbols as the data, or lower min_size"
        )
    membership = pd.DataFrame(columns, index=pd.Index(list(gene_index), name="gene"))
    covered = int(membership.any(axis=1).sum())
    logger.info(
        "kept %d of %d gene sets; %d of %d genes belong to at least one",
        membership.shape[1],
        len(gene_sets),
        covered,
        len(gene_index),
    )
    return membership


def _gene_positions(genes: Sequence[str]) -> dict[str, int]:
    """Map each gene symbol to its position, rejecting duplicates and empty gene lists."""
    gene_list = [str(gene) for gene in genes]
    if not gene_list:
        raise ValueError("genes is empty; pass the gene symbols (e.g. adata.var_names)")
    positions = {gene: position for position, gene in enumerate(gene_list)}
    if len(positions) != len(gene_list):
        duplicated = pd.Index(gene_list)[pd.Index(gene_list).duplicated()].unique()[:5]
        raise ValueError(f"genes contains duplicate symbols, e.g. {list(duplicated)}")
    return positions

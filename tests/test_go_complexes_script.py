"""benchmarks/go_complexes.py: a complex gets its members' GO rows; bad input is named."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
import yaml
from _scripts import load_script


def _load():
    return load_script("go_complexes")


TABLE = pd.DataFrame(
    {
        "gene_symbol": ["RELA", "RELA", "REL", "TP53"],
        "go_id": ["GO:1", "GO:2", "GO:2", "GO:3"],
        "ontology": ["BP", "BP", "BP", "CC"],
    }
)


def test_a_complex_gets_each_member_row_once():
    script = _load()
    merged = script.with_complexes(TABLE, {"NFKB": ["RELA", "REL"]})
    rows = merged[merged["gene_symbol"] == "NFKB"]
    assert sorted(rows["go_id"]) == ["GO:1", "GO:2"]  # RELA's GO:2 and REL's GO:2 are one row
    pd.testing.assert_frame_equal(merged.iloc[: len(TABLE)], TABLE)  # the original rows stay


def test_bad_complexes_are_named():
    script = _load()
    with pytest.raises(ValueError, match=r"members without GO terms.*\['RELB'\]"):
        script.with_complexes(TABLE, {"NFKB": ["RELA", "RELB"]})
    with pytest.raises(ValueError, match="TP53 already has GO terms"):
        script.with_complexes(TABLE, {"TP53": ["RELA"]})
    with pytest.raises(ValueError, match="expected NAME=MEMBER"):
        script.parse_complex("NFKB")
    assert script.parse_complex(" NFKB = RELA, REL ") == ("NFKB", ["RELA", "REL"])


def test_the_script_writes_the_table_and_a_model_config(tmp_path, monkeypatch):
    script = _load()
    source = tmp_path / "go.tsv"
    TABLE.to_csv(source, sep="\t", index=False)
    out, config = tmp_path / "go_nfkb.tsv.gz", tmp_path / "gears.yaml"
    argv = ["go_complexes.py", "--complex", "NFKB=RELA,REL", "--go-table", str(source)]
    argv += ["--out", str(out), "--model-config", str(config)]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    written = pd.read_csv(out, sep="\t")
    assert (written["gene_symbol"] == "NFKB").sum() == 2
    assert yaml.safe_load(config.read_text()) == {"gears": {"go_table": str(out)}}
    with pytest.raises(FileExistsError):  # nothing is replaced without --overwrite
        script.main()

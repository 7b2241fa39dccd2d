"""Give a protein complex the GO terms of its members, so GEARS can place it in its GO graph.

A regulon network can name a complex as one regulator (CollecTRI's ``NFKB``: NFKB1, NFKB2, RELA,
RELB, REL), and a screen simulated on it knocks the complex out as one gene. GEARS refuses a
perturbation without GO terms. This writes a copy of the GO table in which each complex gets
every row of each of its members, renamed to the complex, and a ``--model-config`` file pointing
GEARS at it.

Run: ``.venv/bin/python benchmarks/go_complexes.py --complex NFKB=NFKB1,NFKB2,RELA,RELB,REL
--out runs/go_with_nfkb_complex.tsv.gz --model-config runs/gears_nfkb.yaml``
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import yaml

from perturbflow.data.datasets import data_dir
from perturbflow.data.outputs import write_atomic

logger = logging.getLogger("go_complexes")

GO_TABLE = Path("priors") / "go_orghs" / "gene_go.tsv.gz"
GENE_COLUMN = "gene_symbol"


def parse_complex(text: str) -> tuple[str, list[str]]:
    """``"NAME=A,B,C"`` → ``("NAME", ["A", "B", "C"])``."""
    name, _, members = text.partition("=")
    genes = [gene.strip() for gene in members.split(",") if gene.strip()]
    if not name.strip() or not genes:
        raise ValueError(f"--complex {text!r}: expected NAME=MEMBER,MEMBER,…")
    return name.strip(), genes


def with_complexes(table: pd.DataFrame, complexes: dict[str, list[str]]) -> pd.DataFrame:
    """``table`` plus, for each complex, its members' rows renamed to it (duplicates dropped)."""
    if GENE_COLUMN not in table.columns:
        raise ValueError(f"the GO table has no {GENE_COLUMN!r} column: {list(table.columns)}")
    known = set(table[GENE_COLUMN])
    added = []
    for name, members in complexes.items():
        if name in known:
            raise ValueError(f"{name} already has GO terms in the table; nothing to add")
        missing = [gene for gene in members if gene not in known]
        if missing:
            raise ValueError(f"complex {name}: members without GO terms in the table: {missing}")
        rows = table[table[GENE_COLUMN].isin(members)].copy()
        rows[GENE_COLUMN] = name
        added.append(rows.drop_duplicates())
        logger.info("%s: %d GO rows from %s", name, len(added[-1]), ", ".join(members))
    return pd.concat([table, *added], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--complex", action="append", required=True, help="NAME=A,B,C")
    parser.add_argument("--out", type=Path, required=True, help="the new GO table (.tsv.gz)")
    parser.add_argument(
        "--go-table", type=Path, default=None, help="default: <data>/" + str(GO_TABLE)
    )
    parser.add_argument("--model-config", type=Path, default=None, help="also write this YAML")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source = args.go_table
    if source is None:
        folder = data_dir()
        if folder is None:
            parser.error("no data folder: pass --go-table or set PERTURBFLOW_DATA_DIR")
        source = folder / GO_TABLE
    complexes = dict(parse_complex(text) for text in args.complex)
    table = with_complexes(pd.read_csv(source, sep="\t"), complexes)
    write_atomic(
        args.out,
        args.overwrite,
        lambda tmp: table.to_csv(tmp, sep="\t", index=False, compression="gzip"),
    )
    if args.model_config is not None:
        text = yaml.safe_dump({"gears": {"go_table": str(args.out)}})
        write_atomic(args.model_config, args.overwrite, lambda tmp: tmp.write_text(text))
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()

"""GEARS adapter: run by the GEARS environment's Python, never imported by perturbflow.

Usage: ``.venv-peers/gears/bin/python gears_adapter.py WORK_DIR`` (working directory WORK_DIR:
GEARS writes ``./data``). Imports numpy, pandas, scipy, anndata, torch, torch_geometric and
cell-gears only. The main process prepared everything offline (``data/gene2go_all.pkl``, the GO
graph ``data/go_essential_perturbflow.csv``, ``split.pkl``, ``perturbable_genes.pkl``; see
:mod:`perturbflow.models.peers.gears_env`); this script trains GEARS on the training and
validation cells and writes each requested condition's mean shift, ``GEARS.predict``'s average
over a batch of 300 control cells, to ``predicted_delta.csv``, and ``result.json``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

PROTOCOL = 1
DATASET_NAME = "perturbflow"
PREDICTION_CELLS = 300  # cells per batch in GEARS.predict


class SeriesKeyCSR(sp.csr_matrix):
    """CSR matrix accepting a pandas boolean Series as row key (GEARS.__init__ uses one, which
    current scipy rejects)."""

    def __getitem__(self, key):
        if isinstance(key, pd.Series):
            key = key.to_numpy()
        return super().__getitem__(key)


def gears_spelling(genes: list[str]) -> str:
    if not genes:
        return "ctrl"
    return f"{genes[0]}+ctrl" if len(genes) == 1 else "+".join(sorted(genes))


def main(work_dir: Path) -> None:
    request = json.loads((work_dir / "request.json").read_text())
    if request["protocol"] != PROTOCOL:
        raise SystemExit(f"request protocol {request['protocol']}, this adapter speaks {PROTOCOL}")
    options, files, seed = request["options"], request["files"], int(request["seed"])
    genes_of = request["condition_genes"]

    import gears
    import torch
    from torch_geometric.data import Batch, Data

    # After the import: importing GEARS calls torch.manual_seed(0).
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (GEARS draws from the legacy global generator)
    torch.manual_seed(seed)

    started = time.perf_counter()
    cells = ad.read_h5ad(work_dir / files["cells"])
    labels = cells.obs[request["condition_key"]].astype(str)
    adata = ad.AnnData(
        X=sp.csr_matrix(np.asarray(cells.X, dtype=np.float32)),
        obs=pd.DataFrame(
            {"condition": [gears_spelling(genes_of[name]) for name in labels], "cell_type": "all"},
            index=cells.obs_names,
        ),
        var=pd.DataFrame({"gene_name": list(cells.var_names)}, index=cells.var_names),
    )
    data_path = work_dir / "data"
    pert_data = gears.PertData(
        str(data_path),
        gene_set_path=str(work_dir / files["perturbable_genes"]),
        default_pert_graph=False,
    )
    pert_data.new_data_process(dataset_name=DATASET_NAME, adata=adata)
    pert_data.prepare_split(
        split="custom", seed=seed, split_dict_path=str(work_dir / files["split"])
    )
    pert_data.split = "no_test"  # GEARS's own mode for "no test set"
    pert_data.get_dataloader(batch_size=int(options["batch_size"]))
    pert_data.adata.X = SeriesKeyCSR(pert_data.adata.X)
    trainer = gears.GEARS(pert_data, device="cpu")
    trainer.model_initialize(
        hidden_size=int(options["hidden_size"]),
        num_go_gnn_layers=int(options["num_go_gnn_layers"]),
        num_gene_gnn_layers=int(options["num_gene_gnn_layers"]),
        decoder_hidden_size=int(options["decoder_hidden_size"]),
        num_similar_genes_go_graph=int(options["num_similar_genes_go_graph"]),
        num_similar_genes_co_express_graph=int(options["num_similar_genes_co_express_graph"]),
        coexpress_threshold=float(options["coexpress_threshold"]),
        direction_lambda=float(options["direction_lambda"]),
    )
    trainer.train(
        epochs=int(options["epochs"]),
        lr=float(options["lr"]),
        weight_decay=float(options["weight_decay"]),
    )
    if list(trainer.gene_list) != list(cells.var_names):
        raise SystemExit("GEARS reordered the genes; predictions could not be aligned")
    fitted = time.perf_counter()

    network = trainer.best_model.eval()
    index = {str(gene): i for i, gene in enumerate(trainer.pert_list)}
    rows, names, skipped = [], [], {}
    for name in request["predict"]:
        genes = sorted(genes_of[name])
        unknown = [gene for gene in genes if gene not in index]
        if len(genes) > 2 or unknown:
            skipped[name] = (
                "more than two genes"
                if len(genes) > 2
                else f"genes outside GEARS's graph {unknown}"
            )
            continue
        zero = torch.zeros(len(cells.var_names), 1)  # (G, 1): the output is the shift itself
        graphs = [Data(x=zero, pert_idx=[index[g] for g in genes], pert=genes) for _ in range(2)]
        with torch.no_grad():
            first, other = network(Batch.from_data_list(graphs)).double()  # (G,), (G,)
        n = PREDICTION_CELLS  # the first graph of a batch differs (GEARS 0.1.2's edge indexing)
        rows.append(((first + (n - 1) * other) / n).numpy())
        names.append(name)
    table = pd.DataFrame(
        np.vstack(rows) if rows else np.zeros((0, cells.n_vars)),
        index=pd.Index(names, name="condition"),
        columns=cells.var_names,
    )
    table.to_csv(work_dir / "predicted_delta.csv")
    result = {
        "protocol": PROTOCOL,
        "peer": "gears",
        "version": version("cell-gears"),
        "versions": {name: version(name) for name in ("torch", "torch-geometric")},
        "output": "delta",
        "file": "predicted_delta.csv",
        "fit_s": fitted - started,
        "predict_s": time.perf_counter() - fitted,
        "settings": options,
        "skipped": skipped,
    }
    (work_dir / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

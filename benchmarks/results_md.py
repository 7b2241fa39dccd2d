"""Write benchmarks/RESULTS.md from run folders: the results file is generated, never edited.

Every run folder holds ``command.txt`` (the command that made it, printed above its table) and
either ``table.md`` (written by the ablation, program-quality and speed scripts) or the
``results.csv`` of ``perturbflow benchmark``, tabled here (mean ± sd over seeds of per-seed
subgroup means). ``timings.csv``, when present, gives the median fit time of the slow models.
A low-sample run (``--train-cells``, a ``train_cells`` column) is tabled as metric × model ×
training cells per condition over its combo subgroups' conditions, with scbig's discrimination
at the fewest cells next to the additive baseline's.

Run (the default list of run folders is :data:`RUNS`):
``.venv/bin/python benchmarks/results_md.py`` or ``… results_md.py runs/a runs/b --out FILE``
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from perturbflow.report.markdown import (
    HEADLINE,
    TRAIN_CELLS,
    level_order,
    low_sample_markdown,
    low_sample_table,
    metrics_table,
)

# (run folder, section title); each folder's own command.txt says how to remake it.
RUNS = (
    (
        "runs/grn_accept_simulation_v8",
        "Issue 12 acceptance, GEARS simulation split, with the current defaults (scbig's start "
        "takes pooled effects where held-out training combinations prefer them, "
        "`prior_combination_weight=1`): six GRN screens, 5 seeds; scbig rerun (`grn_v8_simulation`), "
        "the baselines from `grn_accept_simulation_v7`; made with 20 integration steps (the default "
        "is now 5, which moved scbig by at most 0.0002 of Pearson in `ode5`)",
    ),
    (
        "runs/grn_accept_combo_v8",
        "Issue 12 acceptance, combo split, with the current defaults: six GRN screens, 5 seeds; "
        "scbig rerun (`grn_v8_combo`), the baselines from `grn_accept_combo_v5`; 20 integration "
        "steps (see `ode5`)",
    ),
    (
        "runs/pooled_choice_scbig",
        "scbig with the start's pooled-effects choice (`pooled_start`, now the default) against "
        "the previous default (`scbig_default` here), on two GRN screens made for this check "
        "(DoRothEA s13, CollecTRI s19), simulation and combo splits, 5 seeds",
    ),
    (
        "runs/ode5",
        "scbig integrating its flow in 5 midpoint steps (`ode5`, now the default) against 20 "
        "(`scbig_default` here), DoRothEA s13 and CollecTRI s19, simulation split, 5 seeds",
    ),
    (
        "runs/real_norman19_combo_ode5",
        "`norman19_subset`, combo split, 5 seeds, scbig with 5 integration steps (compare "
        "`real_norman19_combo_v7`, 20 steps)",
    ),
    (
        "runs/speed_predict_ode5",
        "scbig's prediction throughput with 5 integration steps (quiet machine, one thread; "
        "compare `speed_predict_after`, 20 steps)",
    ),
    (
        "runs/speed_predict_ode5_2threads",
        "The same with two threads (compare `speed_predict_after_2threads`)",
    ),
    (
        "runs/pooled_choice_heldout",
        "The start's pooled-effects choice (`network_pooled_choice`) against the map with single "
        "means (`network`), both as variants − `calibrated_additive`, on DoRothEA s13 and "
        "CollecTRI s19, 5 seeds",
    ),
    (
        "runs/pooled_choice_grn",
        "The same on the six GRN screens of the acceptance, simulation split, 5 seeds "
        "(`network_pooled_singles`: the previous rule, pooled only where the map says no map)",
    ),
    (
        "runs/pooled_choice_synth_norman",
        "The same on two built-in synthetic screens (planted interactions; simulation split) and "
        "`norman19_subset` (combo split), 5 seeds",
    ),
    (
        "runs/real_norman19_combo_v7",
        "`norman19_subset`, combo split, 5 seeds, with the current defaults",
    ),
    (
        "runs/grn_accept_simulation_v7",
        "Issue 12 acceptance, GEARS simulation split, with the current defaults "
        "(`combination_genes` on, `combination_weight` 0): six GRN screens, 5 seeds; scbig, "
        "`calibrated_additive` and `network_additive` rerun (`grn_v7_simulation_a`, `_b`), the "
        "other baselines from `grn_accept_simulation_v5`",
    ),
    (
        "runs/grn_accept_combo_v6",
        "Issue 12 acceptance, combo split, six GRN screens, 5 seeds, with pooled effects where "
        "the network map is not used (`combination_weight=1`, tried as the default and not kept: "
        "see `synthetic_defaults`): scbig, `calibrated_additive` and `network_additive` rerun (`grn_v6_combo`, `grn_pooled_default_s11`, "
        "`grn_v6_s11_network`; scbig's numbers equal v5's); the other baselines from "
        "`grn_accept_combo_v5`",
    ),
    (
        "runs/grn_accept_simulation_v6",
        "Issue 12 acceptance, GEARS simulation split, six GRN screens, 5 seeds, with "
        "`combination_weight=1` (not the default); scbig, `calibrated_additive` and `network_additive` rerun "
        "(`grn_v6_simulation`), the other baselines from `grn_accept_simulation_v5`",
    ),
    (
        "runs/grn_accept_combo_v5",
        "Issue 12 acceptance, combo split: six GRN screens, 5 seeds, scbig whose combinations "
        "start partway to the combinator's mean, the share chosen by cross-validation on the "
        "held-out training combinations' top DE genes; DoRothEA s11 was made for this check. "
        "`grn_accept_combo_v4` (scbig and additive rerun there; the other baselines merged from "
        "`grn_accept_combo_v3` and `grn_s11_baselines`; 4-5 jobs shared the 2 cores, so fit "
        "seconds are upper bounds) plus `pooled_additive` (`grn_pooled_a`, `_b`) and the variant "
        "`pooled_start`, scbig starting from the pooled single effects (`grn_pooled_start_a`, "
        "`_b`), and `half_pooled_start`, combinations of seen genes started halfway to "
        "`pooled_additive`'s mean (`grn_half_pooled_a`, `_b`; 2 jobs on the 2 cores each)",
    ),
    (
        "runs/grn_pooled_a",
        "`pooled_additive` against `additive` and `network_additive`, combo and GEARS simulation "
        "splits, the staged screen, DoRothEA s11 and s2 (5 seeds)",
    ),
    (
        "runs/grn_pooled_b",
        "`pooled_additive` against `additive` and `network_additive`, combo and GEARS simulation "
        "splits, DoRothEA s7, CollecTRI s3 and s1_fresh (5 seeds)",
    ),
    (
        "runs/grn_accept_simulation_v5",
        "Issue 12 acceptance, GEARS simulation split: four GRN screens, 5 seeds, scbig with the "
        "cross-validated combinator share (`grn_accept_simulation_v4`: scbig and additive rerun; "
        "the other baselines merged from `grn_accept_simulation_v3`; 3-5 jobs shared the 2 "
        "cores, so fit seconds are upper bounds), plus `pooled_additive` on six screens "
        "(`grn_pooled_a`, `_b`; DoRothEA s11 and s7 have only the three pooled-run baselines)",
    ),
    (
        "runs/fit_time_s11",
        "scbig's fit time on 2 quiet cores (both threads, nothing else running): DoRothEA s11, "
        "12,300 cells × 250 genes, 151 conditions, combo split seed 1",
    ),
    (
        "runs/peers_grnsim_s1_combo_v2",
        "Issue 16: every built-in model, GEARS 0.1.2 and CellFlow 0.0.9 (each in its own "
        "environment) side by side in one run, the staged `grnsim_collectri_s1`, combo split, 5 "
        "seeds (GEARS with NFKB given its members' GO terms, `--model-config`; scbig refitted at "
        "the current default with `--resume` after its rows were removed from "
        "`peers_grnsim_s1_combo`; 3-5 jobs shared the 2 cores, so fit seconds are upper bounds)",
    ),
    (
        "runs/peers_norman19_combo_v2",
        "Issue 16: every built-in model, GEARS 0.1.2 and CellFlow 0.0.9 (each in its own "
        "environment) side by side in one run, `norman19_subset`, combo split, 5 seeds (scbig "
        "refitted at the current default with `--resume` after its rows were removed from "
        "`peers_norman19_combo`; 3-5 jobs shared the 2 cores, so fit seconds are upper bounds)",
    ),
    (
        "runs/grn_accept_combo_v3",
        "Issue 12 acceptance, combo split: five GRN screens, 5 seeds, scbig with the flow's mean "
        "and shape weights chosen by cross-validation (scbig and additive rerun; the other "
        "baselines, which did not change, merged from `grn_shape_pca`)",
    ),
    (
        "runs/grn_accept_simulation_v3",
        "Issue 12 acceptance, GEARS simulation split: four GRN screens, 5 seeds, scbig with "
        "cross-validated mean and shape weights (scbig and additive rerun; the other baselines, "
        "which did not change, merged from `grn_accept_simulation_v2`)",
    ),
    (
        "runs/grn_shape_pca",
        "The shape weight chosen by the energy on control PCs alone (superseded by the sum of "
        "relative energies on PCs and genes, `grn_accept_combo_v3`)",
    ),
    (
        "runs/grn_fastflow",
        "scbig's flow at 4x the learning rate, last weights kept (`fast_flow`), with the "
        "PCA-only shape weight: compare with `grn_shape_pca`; DoRothEA s2 and CollecTRI s3 "
        "stopped after 2 seeds",
    ),
    (
        "runs/pooled_singles",
        "Pooled effects for seen genes (`calibrated_additive`'s `combination_weight=1`, off by "
        "default), without and with the network map: variant − single means, held-out GRN "
        "screens, combo split, 5 seeds",
    ),
    (
        "runs/pooled_singles_b",
        "The same on the simulation split of two held-out GRN screens and on the real screens",
    ),
    (
        "runs/synthetic_defaults",
        "Pooled effects for seen genes (`pooled_singles`) and the unseen-gene fallback for genes "
        "seen only in doubles (`no_combination_genes`) against the defaults, on two built-in "
        "synthetic screens (planted interactions), simulation split, 5 seeds: why "
        "`combination_weight` stays 0",
    ),
    (
        "runs/real_norman19_combo_v6",
        "`norman19_subset`, combo split, 5 seeds, with pooled effects (`prior_combination_weight=1`, "
        "not the default) and `combination_genes` in scbig's start",
    ),
    (
        "runs/grn_pooled_default_s11",
        "scbig with pooled effects (`prior_combination_weight=1`) on DoRothEA s11 (combo split, "
        "5 seeds): the map is used there, so only the inner fold can move",
    ),
    (
        "runs/shrinkage_start",
        "Shrunk single deltas (`calibrated_additive`'s `shrinkage=1`, off by default), with and "
        "without the network map: variant − `calibrated_additive`, paired over 5 seeds, held-out "
        "GRN screens and the real screens",
    ),
    (
        "runs/grn_shrunk_merged",
        "scbig started from shrunk single deltas (`shrunk_start`, `prior_shrinkage=1`) against "
        "`scbig_default` and the baselines of `grn_accept_combo_v5`, combo split, 5 seeds",
    ),
    (
        "runs/combination_genes",
        "Genes measured only in training combinations (`calibrated_additive`'s "
        "`combination_genes`, on by default): three held-out GRN screens with the singles of 30% "
        "of the genes removed, combo split, 5 seeds, the fallback variant − default",
    ),
    (
        "runs/combination_genes_norman",
        "The same on `norman19_subset` (combo split, 5 seeds), where the option was found",
    ),
    (
        "runs/real_norman19_combo_v5",
        "`norman19_subset`, combo split, 5 seeds, with `combination_genes` in scbig's start and "
        "the `pooled_additive` row",
    ),
    (
        "runs/real_norman19_combo_v4",
        "`norman19_subset`, combo split, 5 seeds, scbig with cross-validated mean and shape "
        "weights",
    ),
    (
        "runs/real_mcfaline23_ccl_v3",
        "`mcfaline23_subset`, cross-cell-line split, 5 seeds, scbig with cross-validated mean and "
        "shape weights",
    ),
    (
        "runs/real_papalexi_unseen_v4",
        "`papalexi21_thp1`, unseen-single split, 5 seeds, scbig with cross-validated mean and "
        "shape weights",
    ),
    (
        "runs/grn_accept_combo_v2",
        "Issue 12 acceptance, combo split: four GRN screens, 5 seeds, scbig starting from "
        "`network_additive`, the flow's reshaping always kept whole (before the shape weight)",
    ),
    (
        "runs/grn_accept_simulation_v2",
        "Issue 12 acceptance, GEARS simulation split: four GRN screens, 5 seeds, scbig starting "
        "from `network_additive`, the flow's reshaping kept whole (before the shape weight)",
    ),
    (
        "runs/grn_cross_fit_a",
        "scbig with cross-fitted training starts (`cross_fit_start=True`): DoRothEA s2 and "
        "CollecTRI s1_fresh, combo split, 5 seeds (the default on the same splits: "
        "`grn_accept_combo_v2`)",
    ),
    (
        "runs/grn_cross_fit_b",
        "scbig with cross-fitted training starts: CollecTRI s3 and the held-out DoRothEA s7, combo "
        "split, 5 seeds (the default on s7: `grn_s7_default_a`, `grn_s7_default_b`)",
    ),
    ("runs/grn_s7_default_a", "scbig's default on DoRothEA s7, combo split, seeds 1-3"),
    ("runs/grn_s7_default_b", "scbig's default on DoRothEA s7, combo split, seeds 4-5"),
    (
        "runs/oracle_shift",
        "The floor of mean-shift models: control cells moved onto each held-out condition's "
        "real mean",
    ),
    (
        "runs/real_norman19_combo_v3",
        "`norman19_subset`, combo split, 5 seeds, scbig starting from `network_additive` "
        "(reshaping kept whole)",
    ),
    (
        "runs/real_mcfaline23_ccl_v2",
        "`mcfaline23_subset`, cross-cell-line split, 5 seeds, scbig starting from "
        "`network_additive` (reshaping kept whole)",
    ),
    (
        "runs/real_papalexi_unseen_v3",
        "`papalexi21_thp1`, unseen-single split, 5 seeds, scbig starting from `network_additive` "
        "(reshaping kept whole)",
    ),
    (
        "runs/grnsim_s1_combo_gears_nfkb",
        "GEARS on the staged `grnsim_collectri_s1`, combo split, 5 seeds, with CollecTRI's NFKB "
        "complex given the GO terms of NFKB1, NFKB2, RELA, RELB and REL (`--model-config` "
        "`go_table`; without them GEARS refuses every seed before training, "
        "`grnsim_s1_combo_gears`); the other models on the same splits: `grn_accept_combo_v3`",
    ),
    (
        "runs/grnsim_s1_combo_gears",
        "GEARS on the staged `grnsim_collectri_s1` with the shipped GO table: refused before "
        "training in every seed (NFKB has no GO terms)",
    ),
    (
        "runs/grnsim_s1_combo_cellflow",
        "CellFlow (own environment, GO gene vectors) on the staged `grnsim_collectri_s1`, combo "
        "split, 5 seeds (the other models on the same splits: `grn_accept_combo_v2`)",
    ),
    (
        "runs/grn_accept_combo",
        "Issue 12 acceptance, combo split: three GRN screens, 5 seeds, scbig starting from "
        "`calibrated_additive` (before the network map; fit seconds inflated by the OpenMP "
        "thread defect)",
    ),
    (
        "runs/grn_accept_simulation",
        "Issue 12 acceptance, GEARS simulation split: three GRN screens, 5 seeds, scbig starting "
        "from `calibrated_additive` (before the network map)",
    ),
    (
        "runs/start_defaults",
        "How `calibrated_additive` (scbig's start) sets its defaults: variant − default, paired "
        "over seeds, on the screens used to choose and on held-out screens and seeds",
    ),
    ("runs/grn_insilico", "In-silico GRN edges of held-out regulators (propagating start)"),
    (
        "runs/real_papalexi_unseen_v2",
        "`papalexi21_thp1`, unseen-single split, 5 seeds, with the start's current defaults",
    ),
    (
        "runs/real_norman19_combo_v2",
        "`norman19_subset`, combo split, 5 seeds, with the start's current defaults",
    ),
    (
        "runs/speed_sparse_scbig/before",
        "scbig on sparse screens (2,000 genes, 9.5% non-zero; 1 autoencoder epoch, 50 flow "
        "steps): before bounded fitting (code of 0006627)",
    ),
    (
        "runs/speed_sparse_scbig/after_io",
        "scbig on sparse screens: bounded fitting (max_fit_cells 50,000) and sparse cell pools",
    ),
    (
        "runs/speed_1m",
        "Sparse screens to a million cells (2,000 genes, 9.5% non-zero): baselines read into "
        "memory, scbig in backed mode (1 autoencoder epoch, 200 flow steps), each in its own "
        "process on a quiet machine, one thread",
    ),
    (
        "runs/speed_predict_before",
        "scbig's prediction throughput, 100 conditions × 1,000 cells, one thread: per-condition "
        "code (before 1ac2834)",
    ),
    (
        "runs/speed_predict_after",
        "scbig's prediction throughput: conditions in blocks, flows skipped where the "
        "cross-validated weights keep nothing (quiet machine, one thread)",
    ),
    (
        "runs/speed_predict_after_2threads",
        "scbig's prediction throughput, the same with two threads",
    ),
    (
        "runs/ddp",
        "scbig with 2-process CPU DDP (gloo) against single-process fits of three seeds "
        "(each rank drew the single run's conditions per step: twice the batch)",
    ),
    (
        "runs/ddp_equal_batch",
        "scbig with 2-process CPU DDP (gloo), each rank drawing half the single run's "
        "conditions per step, against single-process fits of three seeds",
    ),
    (
        "runs/norman19_combo_cellflow",
        "CellFlow (own environment, GO gene vectors) on `norman19_subset`, combo split",
    ),
    (
        "runs/grn_combo_dorothea_s2",
        "GRN screen (DoRothEA, seed 2): combo split (start calibrated on all genes, no propagation)",
    ),
    (
        "runs/grn_combo_collectri_s3",
        "GRN screen (CollecTRI, seed 3): combo split (start calibrated on all genes, no "
        "propagation)",
    ),
    (
        "runs/grn_combo_collectri_s1_fresh",
        "GRN screen (CollecTRI, seed 1): combo split (start calibrated on all genes, no "
        "propagation)",
    ),
    (
        "runs/grn_sim_split",
        "GRN screens: GEARS simulation split (start calibrated on all genes, no propagation)",
    ),
    (
        "runs/grn_components5",
        "scBIG's components on the three GRN screens (3–4 split seeds each, 11 pairs)",
    ),
    ("runs/norman19_combo", "`norman19_subset`, combo split, 5 seeds"),
    ("runs/norman19_combo_gears", "GEARS on `norman19_subset`, combo split, 5 seeds (same splits)"),
    ("runs/real_norman19_combo", "`norman19_subset`, combo split: scbig's start points"),
    ("runs/unseen_papalexi", "`papalexi21_thp1`, unseen-single split, 5 seeds, prior embeddings"),
    ("runs/real_papalexi_unseen", "`papalexi21_thp1`, unseen-single split: scbig's start points"),
    ("runs/unseen_norman", "Unseen genes with prior embeddings: `norman19_subset`, simulation"),
    ("runs/real_mcfaline23_ccl", "`mcfaline23_subset`, cross-cell-line split, 5 seeds"),
    (
        "runs/low_sample_norman",
        "Low-sample curve: `norman19_subset`, combo split, 10/25/50/all training cells, 3 seeds "
        "(`benchmarks/low_sample.sh`; scbig at 200 flow steps)",
    ),
    (
        "runs/low_sample_grn",
        "Low-sample curve: GRN screen (DoRothEA, seed 2), combo split, 10/25/50/all cells, 3 seeds "
        "(`benchmarks/low_sample.sh`; scbig at 200 flow steps)",
    ),
    (
        "runs/context_transfer",
        "Cross-context prediction: calibration to the target context (paired over seeds)",
    ),
    (
        "runs/grn_2types_cross_context",
        "Two-cell-type GRN screen (DoRothEA, seed 4): cross_context split, 5 seeds",
    ),
    ("runs/guides", "`papalexi21_thp1` at guide level: held-out guides of seen genes"),
    ("runs/locus_papalexi", "Locus features (GENCODE hg38): `papalexi21_thp1`, unseen-single"),
    ("runs/locus_norman", "Locus features (GENCODE hg38): `norman19_subset`, simulation split"),
    ("runs/design", "Experiment design: ranked vs random doubles over simulated rounds"),
    (
        "runs/context_matching",
        "Control cells matched by context vs unmatched on confounded two-context screens",
    ),
    (
        "runs/calibration",
        "Calibration of prediction intervals on the three GRN screens (combo split)",
    ),
    ("runs/grn", "Gene regulatory networks from screens, expression and graph completion"),
    (
        "runs/grn_dorothea",
        "Gene regulatory networks on three DoRothEA screens (s7, s11, s13): screen-derived, "
        "in-silico and completion edges, 5 seeds, the encoder with its correlation readout",
    ),
    (
        "runs/grn_readout",
        "Graph completion with the encoder's two readouts (`gat_encoder`: the decoder Jacobian, "
        "then the default; `gat_encoder_correlation`: each gene's correlation with the latent "
        "codes, now the default) and expression features, four GRN screens, 5 seeds",
    ),
    ("runs/program_quality", "Gene-program quality"),
    ("runs/speed", "Speed and memory (the run was stopped after 10k cells and one 50k model)"),
    (
        "runs/speed200k",
        "Speed and memory at 50k and 200k cells (run while other benchmarks shared the 2 cores: "
        "times are upper bounds; memory is each model's own process)",
    ),
    ("runs/demo_time", "`perturbflow demo` wall time"),
)

INTRO = """# Measured results

Generated by `benchmarks/results_md.py` from the run folders named below; rerun the command of a
section to reproduce it (2 CPU cores unless stated). Each metrics table cell is the mean ± sd over
seeds of the per-seed subgroup mean; lower is better for `mse_de20` and the energy distances.
Paired differences are each model minus scbig, per seed, with a 95% bootstrap CI over seeds.
A run records the code it ran with: in runs made before scbig's default became the PCA latent,
`scbig` is scBIG's published component set (GCAE, alignment, OT pairing), and `noise_ceiling`
rows made before the perfect-model correction are plain split-half values (lower than the
corrected ceiling); each section gives the time its run started. Tables of earlier versions
whose run folders are gone are kept in `ARCHIVE.md`.

The GRN screens were made with `perturbflow simulate --engine sergio` at default sizes (250 genes,
50 singles, 100 doubles, 80 cells, 300 control cells):
`--network dorothea --seed 2 --out runs/screens/grnsim_dorothea_s2.h5ad`,
`--network collectri --seed 3 --out runs/screens/grnsim_collectri_s3.h5ad`,
`--network collectri --seed 1 --out runs/screens/grnsim_collectri_s1_fresh.h5ad`, and, each for
checking a change made on the others, `--network dorothea --seed 7 --out
runs/screens/grnsim_dorothea_s7.h5ad` and `--network dorothea --seed 11 --out
runs/screens/grnsim_dorothea_s11.h5ad`. The staged
`grnsim_collectri_s1` (`perturbflow datasets`) was simulated on one re-used network whose
knock-outs accumulate over conditions, so its doubles share a large non-additive part; it is
tabled apart where used. Benchmark jobs ran two at a time on the 2 cores, one thread each
(`OMP_NUM_THREADS=1`), so fit seconds are single-core times, except in runs started before
2026-11-30 18:40 UTC: there the first DE test of a run reset torch's OpenMP threads to 2, and
the two jobs' fits competed for the cores (scbig 180-730 s instead of about 70 s).
"""


def _failures(folder: Path) -> list[str]:
    """A line per run that failed in some seeds (``runs.json``'s ``failed``: seed → error)."""
    runs_file = folder / "runs.json"
    if not runs_file.exists():
        return []
    lines = []
    for label, meta in json.loads(runs_file.read_text()).items():
        for seed, error in sorted(meta.get("failed", {}).items()):
            lines.append(f"{label} failed in seed {seed} (left out): {error}\n")
    return lines


def section(folder: Path, title: str | None = None) -> str:
    """One run folder's heading, command, median slow fit times and table."""
    command = (folder / "command.txt").read_text().strip()
    heading = f"## {title} (`{folder.name}`)" if title else f"## `{folder.name}`"
    started = datetime.fromtimestamp((folder / "command.txt").stat().st_mtime, tz=timezone.utc)
    lines = [
        heading + "\n",
        f"Run started {started:%Y-%m-%d %H:%M} UTC.\n",
        f"```bash\n{command}\n```\n",
    ]
    timings = folder / "timings.csv"
    if timings.exists():
        fits = pd.read_csv(timings)
        medians = fits.groupby("model", sort=False)["fit_s"].median().astype(float)
        slow = medians[medians >= 5].round(0).astype(int)  # the baselines fit in about a second
        if len(slow):
            lines.append(
                "Median fit seconds: " + ", ".join(f"{n} {v}" for n, v in slow.items()) + ".\n"
            )
    lines.extend(_failures(folder))
    if (folder / "table.md").exists():
        lines.append((folder / "table.md").read_text())
    else:
        results = pd.read_csv(folder / "results.csv")
        seeds = sorted(results["seed"].unique())
        lines.append(f"Seeds: {', '.join(str(s) for s in seeds)}.\n")
        if TRAIN_CELLS in results.columns:
            lines.extend(low_sample_section(results))
        else:
            lines.append(metrics_table(results, ("pearson_delta", *HEADLINE)))
    return "\n".join(lines)


LOW_SAMPLE_MODEL, LOW_SAMPLE_REFERENCE = "scbig", "additive"


def low_sample_section(results: pd.DataFrame) -> list[str]:
    """A low-sample run: the metric × model × level table of the combo subgroups and scbig's
    discrimination at the fewest cells next to additive's."""
    subgroups = sorted(s for s in results["subgroup"].unique() if str(s).startswith("combo"))
    chosen = subgroups or None
    lines = [
        "Each cell: mean ± sd over seeds of the per-seed mean over the conditions of "
        + (", ".join(f"`{s}`" for s in subgroups) if subgroups else "every subgroup")
        + "; only the training conditions' cells are subsampled, the test cells are the same at "
        "every level.\n",
        low_sample_markdown(results, HEADLINE, subgroups=chosen),
    ]
    table = low_sample_table(results, ["discrimination_l1"], subgroups=chosen).set_index(
        [TRAIN_CELLS, "model"]
    )
    fewest = level_order(table.index.get_level_values(TRAIN_CELLS))[0]
    pair = [(fewest, model) for model in (LOW_SAMPLE_MODEL, LOW_SAMPLE_REFERENCE)]
    if all(key in table.index for key in pair):
        (model, model_sd), (reference, reference_sd) = (
            table.loc[key, ["mean", "sd"]].to_numpy() for key in pair
        )
        lines.append(
            f"Discrimination (`discrimination_l1`, higher is better) at {fewest} training cells "
            f"per condition: {LOW_SAMPLE_MODEL} {model:.3f} ± {model_sd:.3f}, "
            f"{LOW_SAMPLE_REFERENCE} {reference:.3f} ± {reference_sd:.3f}.\n"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="*", type=Path, help="run folders (default: every folder of RUNS)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS.md"))
    args = parser.parse_args()
    if args.runs:
        chosen = [(folder, None) for folder in args.runs]
        missing = [str(folder) for folder, _ in chosen if not (folder / "command.txt").exists()]
        if missing:
            parser.error(f"run folder(s) without command.txt: {', '.join(missing)}")
    else:
        # The default list: runs not made on this machine yet are named, not fatal.
        chosen = [(Path(f), t) for f, t in RUNS if (Path(f) / "command.txt").exists()]
        for folder, title in RUNS:
            if not (Path(folder) / "command.txt").exists():
                print(f"skipped (not run here): {folder} — {title}", file=sys.stderr)
    text = INTRO + "\n" + "\n".join(section(folder, title) for folder, title in chosen)
    args.out.write_text(text)


if __name__ == "__main__":
    main()

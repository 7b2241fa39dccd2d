#!/usr/bin/env bash
# Low-sample curves: every built-in model fitted on 10, 25, 50 and all training cells per
# condition (test cells whole), combo split, 3 seeds, on norman19_subset and the DoRothEA GRN
# screen. One thread per job; the two jobs run side by side. Tables: benchmarks/results_md.py.
set -euo pipefail
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
PERTURBFLOW=${PERTURBFLOW:-.venv/bin/perturbflow}
COMMON=(--split combo --seeds 1,2,3 --models all --train-cells 10,25,50,all
        --model-config benchmarks/low_sample.yaml)
"$PERTURBFLOW" benchmark norman19_subset "${COMMON[@]}" --out runs/low_sample_norman "$@" \
    > runs/low_sample_norman.log 2>&1 &
"$PERTURBFLOW" benchmark runs/screens/grnsim_dorothea_s2.h5ad "${COMMON[@]}" \
    --out runs/low_sample_grn "$@" > runs/low_sample_grn.log 2>&1 &
wait

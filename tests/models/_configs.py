"""Small model configs shared by the model tests (the defaults train for minutes, not seconds)."""

import dataclasses

from perturbflow.models.scbig import ScBIGConfig

# Every scBIG component switched on (the package default leaves some out), so the tests exercise
# the GCAE, the alignment losses and OT pairing.
TINY_SCBIG = ScBIGConfig(
    autoencoder="gcae",
    alignment=True,
    ot_pairing=True,
    n_programs=4,
    embedding_components=8,
    knn=4,
    chunk_size=8,
    token_dim=16,
    n_heads=2,
    n_blocks=1,
    n_modules=2,
    latent_dim=8,
    ae_epochs=2,
    ae_batch_size=64,
    gene_embedding_dim=16,
    condition_dim=16,
    flow_hidden=32,
    flow_steps=12,
    flow_conditions_per_batch=3,
    flow_cells_per_condition=16,
    align_every=4,
    val_every=6,
    ode_steps=4,
    max_control_cells=200,
    seed=0,
)

# The shared-interface tests (tests/models/test_baselines.py) need a fitted model, not a good
# one: one autoencoder epoch and four flow steps (the cross-validated mean weights included).
FAST_CONFIGS = {"scbig": dataclasses.replace(TINY_SCBIG, ae_epochs=1, flow_steps=4)}

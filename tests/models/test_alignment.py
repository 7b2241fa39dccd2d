"""Alignment losses: zero for identical inputs, growing with a planted decorrelation."""

from __future__ import annotations

import torch

from perturbflow.models.alignment import (
    cluster_correlation_loss,
    correlation_matrix,
    pathway_ot_loss,
    program_means,
)


def _cells(n_cells=200, n_programs=4, genes_per_program=5, coupling=0.9, seed=0):
    """Cells whose program 0 and 1 activities are correlated with strength ``coupling``."""
    generator = torch.Generator().manual_seed(seed)
    activity = torch.randn(n_cells, n_programs, generator=generator)  # (N, K)
    activity[:, 1] = coupling * activity[:, 0] + (1 - coupling**2) ** 0.5 * activity[:, 1]
    labels = torch.arange(n_programs).repeat_interleave(genes_per_program)  # (G,)
    noise = 0.3 * torch.randn(n_cells, len(labels), generator=generator)
    cells = activity[:, labels] + noise  # (N, G)
    membership = torch.nn.functional.one_hot(labels).T.float()  # (K, G)
    return cells, membership


def test_program_means_and_correlation_reference():
    cells = torch.tensor([[1.0, 3.0, 0.0], [3.0, 5.0, 2.0]])
    membership = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(program_means(cells, membership), torch.tensor([[2.0, 0.0], [4.0, 2.0]]))
    corr = correlation_matrix(torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 6.5]]))
    assert torch.allclose(torch.diagonal(corr), torch.ones(2), atol=1e-5)
    assert corr[0, 1] > 0.99


def test_cluster_correlation_zero_for_identical_and_grows_with_decorrelation():
    real, membership = _cells(coupling=0.9)
    assert cluster_correlation_loss(real, real, membership).item() < 1e-6
    losses = [
        cluster_correlation_loss(_cells(coupling=c, seed=1)[0], real, membership).item()
        for c in (0.9, 0.5, 0.0)
    ]
    assert losses[0] < losses[1] < losses[2]


def test_pathway_ot_zero_for_identical_and_grows_with_shift():
    real, membership = _cells()
    assert abs(pathway_ot_loss(real, real, membership).item()) < 1e-5
    losses = [
        pathway_ot_loss(_cells(seed=1)[0] + shift, real, membership).item()
        for shift in (0.0, 0.5, 1.0)
    ]
    assert losses[0] < losses[1] < losses[2]


def test_pathway_ot_grows_with_decorrelation():
    real, membership = _cells(coupling=0.95)
    same = pathway_ot_loss(_cells(coupling=0.95, seed=1)[0], real, membership).item()
    broken = pathway_ot_loss(_cells(coupling=-0.95, seed=1)[0], real, membership).item()
    assert broken > same


def test_losses_are_differentiable():
    real, membership = _cells()
    predicted = (real + 0.2).requires_grad_(True)
    loss = cluster_correlation_loss(predicted * 1.5, real, membership) + pathway_ot_loss(
        predicted, real, membership
    )
    loss.backward()
    assert predicted.grad is not None and predicted.grad.abs().sum() > 0

"""Structure-aware alignment losses (docs/method.md §2.5): keep program-level coordination.

Both compare a batch of *predicted* cells with a batch of *real* cells of the same condition, in a
program (or pathway) summary space; both are differentiable in the predicted cells and exactly
zero when the two batches are identical.
"""

from __future__ import annotations

import ot
import torch


def program_means(cells: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """Mean expression of each program per cell.

    ``cells`` (B, G); ``membership`` (P, G) non-negative weights (e.g. one-hot cluster labels, or
    pathway gene sets); returns (B, P).
    """
    weights = membership / membership.sum(dim=1, keepdim=True).clamp(min=1e-12)  # (P, G)
    return cells @ weights.T  # (B, P)


def correlation_matrix(values: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation between the columns of ``values`` (B, P) → (P, P)."""
    centred = values - values.mean(dim=0, keepdim=True)  # (B, P)
    covariance = centred.T @ centred / max(values.shape[0] - 1, 1)  # (P, P)
    scale = torch.sqrt(torch.diagonal(covariance).clamp(min=eps))  # (P,)
    return covariance / (scale[:, None] * scale[None, :])


def cluster_correlation_loss(
    predicted: torch.Tensor, real: torch.Tensor, membership: torch.Tensor
) -> torch.Tensor:
    """Frobenius norm between program–program correlation matrices of predicted and real cells.

    ``predicted`` (B, G), ``real`` (B', G), ``membership`` (K, G). Programs whose mean is constant
    in either batch have undefined correlation; ``eps`` keeps the loss finite.
    """
    predicted_corr = correlation_matrix(program_means(predicted, membership))  # (K, K)
    real_corr = correlation_matrix(program_means(real, membership))  # (K, K)
    return torch.linalg.matrix_norm(predicted_corr - real_corr, ord="fro")


def pathway_ot_loss(
    predicted: torch.Tensor,
    real: torch.Tensor,
    membership: torch.Tensor,
    reg: float = 0.1,
    n_iter: int = 200,
) -> torch.Tensor:
    """Debiased Sinkhorn divergence between predicted and real cells in pathway-mean space.

    ``S(a, b) = OT_ε(a, b) − (OT_ε(a, a) + OT_ε(b, b)) / 2`` with squared Euclidean cost, which is
    zero for identical batches (plain entropic OT is not). Differentiable through POT's torch
    backend.
    """
    x = program_means(predicted, membership)  # (B, P)
    y = program_means(real, membership)  # (B', P)
    return _entropic_ot(x, y, reg, n_iter) - 0.5 * (
        _entropic_ot(x, x, reg, n_iter) + _entropic_ot(y, y, reg, n_iter)
    )


def _entropic_ot(x: torch.Tensor, y: torch.Tensor, reg: float, n_iter: int) -> torch.Tensor:
    cost = torch.cdist(x, y) ** 2  # (B, B')
    scale = cost.detach().max().clamp(min=1e-12)
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=x.dtype, device=x.device)  # (B,)
    b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=y.dtype, device=y.device)  # (B',)
    # A loss needs a good plan, not a converged one: stop after n_iter without warning.
    plan = ot.sinkhorn(
        a, b, cost / scale, reg, numItermax=n_iter, method="sinkhorn_log", warn=False
    )
    return (plan * cost).sum()

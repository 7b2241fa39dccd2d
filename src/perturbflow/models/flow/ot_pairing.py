"""Minibatch pairing of source and target samples: exact OT (POT ``ot.emd``) or random.

A pairing reorders samples, so it must reorder everything attached to them. torchcfm's known bug
is an OT sampler that permutes ``x1`` but not the condition labels that describe ``x1``. Here the
labels travel through the pairing function itself: pass per-sample tensors as ``source_labels``
(attached to ``x0``) and ``target_labels`` (attached to ``x1``), and the returned :class:`Pairing`
holds them indexed exactly like the paired samples. There is no way to get paired samples back
without their labels.

When conditions are mixed in one minibatch, pair each condition's targets with its own source
batch (call :func:`ot_pair` per condition): one OT across all conditions would hand each condition
only the control cells nearest to it, and the flow would learn from a biased source distribution.

Shapes: ``B0`` source batch, ``B1`` target batch, ``N`` pairs, ``D`` latent dimension.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import ot
import torch
from torch import Tensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pairing:
    """Paired samples with their labels; row ``i`` of every field describes pair ``i``.

    ``x0 == x0_original[source_index]`` and ``x1 == x1_original[target_index]``, and each label
    tensor is its original indexed the same way as its samples.
    """

    x0: Tensor  # (N, D)
    x1: Tensor  # (N, D)
    source_labels: tuple[Tensor, ...]  # each (N, ...)
    target_labels: tuple[Tensor, ...]  # each (N, ...)
    source_index: Tensor  # (N,) int64 rows of the original x0
    target_index: Tensor  # (N,) int64 rows of the original x1


def squared_euclidean_cost(x0: Tensor, x1: Tensor) -> Tensor:
    """Pairwise ``||x0_i - x1_j||^2`` as a ``(B0, B1)`` float64 matrix (no gradient)."""
    a = x0.detach().to(torch.float64)  # (B0, D)
    b = x1.detach().to(torch.float64)  # (B1, D)
    cost = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T  # (B0, B1)
    return cost.clamp_min_(0.0)  # (B0, B1)


def ot_plan(x0: Tensor, x1: Tensor, num_iter_max: int = 1_000_000) -> Tensor:
    """Exact OT plan between uniform weights on ``x0`` and ``x1``; CPU float64 ``(B0, B1)``.

    Rows sum to ``1 / B0``, columns to ``1 / B1``. Logs a warning if the network simplex stops
    before optimality (raise ``num_iter_max`` for very large batches).
    """
    cost = squared_euclidean_cost(x0, x1).cpu().numpy()  # (B0, B1)
    n_source, n_target = cost.shape
    source_weights = np.full(n_source, 1.0 / n_source)  # (B0,)
    target_weights = np.full(n_target, 1.0 / n_target)  # (B1,)
    plan, log = ot.emd(source_weights, target_weights, cost, numItermax=num_iter_max, log=True)
    if log.get("warning"):
        logger.warning("ot.emd did not reach optimality: %s", log["warning"])
    return torch.from_numpy(plan)  # (B0, B1)


def ot_pair(
    x0: Tensor,
    x1: Tensor,
    *,
    source_labels: Sequence[Tensor] = (),
    target_labels: Sequence[Tensor] = (),
    n_pairs: int | None = None,
    generator: torch.Generator | None = None,
    num_iter_max: int = 1_000_000,
) -> Pairing:
    """Pair source ``x0 (B0, D)`` with target ``x1 (B1, D)`` by exact minibatch OT.

    The cost is the squared Euclidean distance, the marginals uniform. With ``B0 == B1`` (and
    ``n_pairs`` omitted) the plan is a permutation: the targets stay in their order
    (``target_index = arange(B1)``) and each gets the source the plan assigns to it; no
    randomness is used. Otherwise ``n_pairs`` pairs (default ``B1``) are drawn with replacement
    from the plan using ``generator``. Labels are indexed together with their samples; see
    :class:`Pairing`. Gradients flow through the indexing of ``x0`` / ``x1``, not the plan.
    """
    source_labels, target_labels = _check_inputs(x0, x1, source_labels, target_labels)
    plan = ot_plan(x0, x1, num_iter_max=num_iter_max)  # (B0, B1)
    n_source, n_target = plan.shape
    if n_pairs is None and n_source == n_target:
        source_index = plan.argmax(dim=0)  # (B1,) the source assigned to each target
        if torch.unique(source_index).numel() != n_source:
            raise RuntimeError(
                "ot.emd returned a plan that is not a permutation; raise num_iter_max"
            )
        target_index = torch.arange(n_target)  # (B1,)
    else:
        source_index, target_index = _sample_from_plan(
            plan, _n_pairs(n_pairs, n_target), generator
        )  # (N,), (N,)
    return _index(x0, x1, source_labels, target_labels, source_index, target_index)


def random_pair(
    x0: Tensor,
    x1: Tensor,
    *,
    source_labels: Sequence[Tensor] = (),
    target_labels: Sequence[Tensor] = (),
    n_pairs: int | None = None,
    generator: torch.Generator | None = None,
) -> Pairing:
    """Pair source and target at random (the independent coupling; the "no OT" ablation).

    Same API and guarantees as :func:`ot_pair`. With ``B0 == B1`` (``n_pairs`` omitted) the
    targets stay in order and the sources are a random permutation; otherwise ``n_pairs``
    (default ``B1``) sources and targets are drawn independently and uniformly with replacement.
    Without a generator, a fresh unseeded one is used (never torch's global generator).
    """
    source_labels, target_labels = _check_inputs(x0, x1, source_labels, target_labels)
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    n_source, n_target = x0.shape[0], x1.shape[0]
    if n_pairs is None and n_source == n_target:
        source_index = torch.randperm(
            n_source, generator=generator, device=generator.device
        ).cpu()  # (B1,)
        target_index = torch.arange(n_target)  # (B1,)
    else:
        n = _n_pairs(n_pairs, n_target)
        source_index = torch.randint(
            n_source, (n,), generator=generator, device=generator.device
        ).cpu()  # (N,)
        target_index = torch.randint(
            n_target, (n,), generator=generator, device=generator.device
        ).cpu()  # (N,)
    return _index(x0, x1, source_labels, target_labels, source_index, target_index)


def _sample_from_plan(
    plan: Tensor, n_pairs: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Draw ``n_pairs`` (source, target) index pairs with probability proportional to ``plan``."""
    if generator is not None and generator.device.type != "cpu":
        raise ValueError("the OT plan lives on the CPU; pass a CPU torch.Generator")
    n_target = plan.shape[1]
    probabilities = plan.flatten().clamp_min(0.0)  # (B0 * B1,)
    flat = torch.multinomial(probabilities, n_pairs, replacement=True, generator=generator)  # (N,)
    return flat // n_target, flat % n_target  # (N,), (N,)


def _index(
    x0: Tensor,
    x1: Tensor,
    source_labels: Sequence[Tensor],
    target_labels: Sequence[Tensor],
    source_index: Tensor,
    target_index: Tensor,
) -> Pairing:
    """Apply the pairing to samples and labels alike; the only place that reorders anything."""
    source_index = source_index.to(device=x0.device, dtype=torch.long)  # (N,)
    target_index = target_index.to(device=x1.device, dtype=torch.long)  # (N,)
    return Pairing(
        x0=x0[source_index],  # (N, D)
        x1=x1[target_index],  # (N, D)
        source_labels=tuple(label[source_index.to(label.device)] for label in source_labels),
        target_labels=tuple(label[target_index.to(label.device)] for label in target_labels),
        source_index=source_index,  # (N,)
        target_index=target_index,  # (N,)
    )


def _check_inputs(
    x0: Tensor, x1: Tensor, source_labels: Sequence[Tensor], target_labels: Sequence[Tensor]
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Validate samples and labels; return the labels as tuples (iterables are read once)."""
    if x0.ndim != 2 or x1.ndim != 2:
        raise ValueError(
            f"x0 and x1 must be 2-D (batch, dim), got shapes {tuple(x0.shape)} and "
            f"{tuple(x1.shape)}"
        )
    if x0.shape[1] != x1.shape[1]:
        raise ValueError(
            f"x0 and x1 must have the same dimension, got {x0.shape[1]} and {x1.shape[1]}"
        )
    if x0.shape[0] == 0 or x1.shape[0] == 0:
        raise ValueError("cannot pair an empty batch")
    checked = []
    for name, labels, n in (
        ("source_labels", source_labels, x0.shape[0]),
        ("target_labels", target_labels, x1.shape[0]),
    ):
        if isinstance(labels, Tensor):
            raise TypeError(
                f"{name} must be a sequence of tensors, e.g. ({name[:6]}_ids,), not a bare tensor"
            )
        labels = tuple(labels)
        for position, label in enumerate(labels):
            if not isinstance(label, Tensor):
                raise TypeError(
                    f"{name}[{position}] must be a torch.Tensor, got {type(label).__name__}"
                )
            if label.ndim == 0 or label.shape[0] != n:
                raise ValueError(
                    f"{name}[{position}] must have {n} rows (one per sample), "
                    f"got shape {tuple(label.shape)}"
                )
        checked.append(labels)
    return checked[0], checked[1]


def _n_pairs(n_pairs: int | None, n_target: int) -> int:
    n = n_target if n_pairs is None else n_pairs
    if n < 1:
        raise ValueError(f"n_pairs must be at least 1, got {n}")
    return n

"""Minibatch pairing: exact OT against the assignment solver, and labels that move with samples.

The torchcfm bug we guard against: reordering samples without reordering the labels that
describe them. Every test that pairs also checks that each label still describes its sample.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from perturbflow.models.flow import Pairing, ot_pair, ot_plan, random_pair, squared_euclidean_cost


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("n", "dim", "seed"), [(6, 3, 0), (6, 5, 1), (8, 2, 2), (8, 4, 3)])
def test_equal_sizes_give_the_exact_assignment(n: int, dim: int, seed: int) -> None:
    g = _gen(seed)
    x0 = torch.randn(n, dim, generator=g)  # (n, dim)
    x1 = torch.randn(n, dim, generator=g) + 0.5  # (n, dim)
    cost = ((x0[:, None, :] - x1[None, :, :]) ** 2).sum(-1).double().numpy()  # (n, n)
    rows, cols = linear_sum_assignment(cost)
    expected_source = np.empty(n, dtype=np.int64)
    expected_source[cols] = rows  # the source assigned to each target

    pairing = ot_pair(x0, x1)

    assert isinstance(pairing, Pairing)
    np.testing.assert_array_equal(pairing.target_index.numpy(), np.arange(n))
    np.testing.assert_array_equal(pairing.source_index.numpy(), expected_source)
    assert torch.equal(pairing.x0, x0[pairing.source_index])
    assert torch.equal(pairing.x1, x1)
    paired_cost = ((pairing.x0 - pairing.x1) ** 2).sum().item()
    assert paired_cost == pytest.approx(cost[rows, cols].sum(), rel=1e-6)


def test_labels_move_with_their_samples_equal_sizes() -> None:
    g = _gen(4)
    x0 = torch.randn(8, 3, generator=g)  # (8, 3)
    x1 = torch.randn(8, 3, generator=g)  # (8, 3)
    source_ids = torch.arange(8)  # (8,)
    target_ids = torch.arange(8) + 100  # (8,)
    target_embedding = torch.randn(8, 5, generator=g)  # (8, 5)

    pairing = ot_pair(
        x0, x1, source_labels=(source_ids,), target_labels=(target_ids, target_embedding)
    )

    assert torch.equal(pairing.x0, x0[pairing.source_index])
    assert torch.equal(pairing.x1, x1[pairing.target_index])
    assert torch.equal(pairing.source_labels[0], source_ids[pairing.source_index])
    assert torch.equal(pairing.target_labels[0], target_ids[pairing.target_index])
    assert torch.equal(pairing.target_labels[1], target_embedding[pairing.target_index])
    assert sorted(pairing.source_index.tolist()) == list(range(8))  # a permutation


@pytest.mark.parametrize("pair", [ot_pair, random_pair])
def test_labels_move_with_their_samples_unequal_sizes(pair) -> None:
    g = _gen(5)
    x0 = torch.randn(7, 2, generator=g)  # (7, 2)
    x1 = torch.randn(11, 2, generator=g)  # (11, 2)
    source_ids = torch.arange(7)  # (7,)
    target_ids = torch.arange(11)  # (11,)

    pairing = pair(
        x0, x1, source_labels=(source_ids,), target_labels=(target_ids,), generator=_gen(0)
    )

    assert pairing.x0.shape == pairing.x1.shape == (11, 2)  # n_pairs defaults to B1
    assert torch.equal(pairing.x0, x0[pairing.source_index])
    assert torch.equal(pairing.x1, x1[pairing.target_index])
    assert torch.equal(pairing.source_labels[0], pairing.source_index)
    assert torch.equal(pairing.target_labels[0], pairing.target_index)


@pytest.mark.parametrize("pair", [ot_pair, random_pair])
def test_condition_labels_still_describe_their_cells(pair) -> None:
    """Targets of condition k sit near 10 k; after pairing, each condition id must still agree."""
    g = _gen(6)
    condition_id = torch.tensor([2, 0, 1, 2, 1, 0, 0, 2, 1, 1])  # (10,) deliberately shuffled
    x1 = 10.0 * condition_id[:, None].float() + torch.randn(10, 2, generator=g)  # (10, 2)
    x0 = torch.randn(10, 2, generator=g)  # (10, 2)
    for n_pairs in (None, 25):
        pairing = pair(x0, x1, target_labels=(condition_id,), n_pairs=n_pairs, generator=_gen(1))
        from_position = torch.round(pairing.x1.mean(1) / 10).long()  # (N,)
        assert torch.equal(pairing.target_labels[0], from_position)


def test_one_dimensional_ot_is_sorting() -> None:
    g = _gen(7)
    x0 = torch.randn(20, 1, generator=g)  # (20, 1)
    x1 = 3.0 * torch.rand(20, 1, generator=g) - 1.0  # (20, 1)

    pairing = ot_pair(x0, x1)

    order = torch.argsort(pairing.x1[:, 0])  # (20,)
    assert torch.all(torch.diff(pairing.x0[order, 0]) > 0)  # the monotone map
    assert torch.equal(torch.sort(pairing.x0[:, 0]).values, torch.sort(x0[:, 0]).values)


def test_unequal_sizes_sample_the_plan_support_reproducibly() -> None:
    g = _gen(8)
    x0 = torch.randn(5, 3, generator=g)  # (5, 3)
    x1 = torch.randn(9, 3, generator=g)  # (9, 3)
    plan = ot_plan(x0, x1)  # (5, 9)
    np.testing.assert_allclose(plan.sum(1).numpy(), np.full(5, 1 / 5))
    np.testing.assert_allclose(plan.sum(0).numpy(), np.full(9, 1 / 9))

    first = ot_pair(x0, x1, n_pairs=200, generator=_gen(3))
    second = ot_pair(x0, x1, n_pairs=200, generator=_gen(3))

    assert first.source_index.shape == (200,)
    assert torch.equal(first.source_index, second.source_index)
    assert torch.equal(first.target_index, second.target_index)
    assert torch.all(plan[first.source_index, first.target_index] > 0)


def test_ot_pairing_lowers_the_cost_against_random_pairing() -> None:
    g = _gen(9)
    x0 = torch.randn(32, 4, generator=g)  # (32, 4)
    x1 = torch.randn(32, 4, generator=g) + 1.0  # (32, 4)
    optimal = ot_pair(x0, x1)
    random = random_pair(x0, x1, generator=_gen(0))
    assert ((optimal.x0 - optimal.x1) ** 2).sum() < ((random.x0 - random.x1) ** 2).sum()


def test_random_pair_is_a_seeded_permutation_for_equal_sizes() -> None:
    g = _gen(10)
    x0 = torch.randn(12, 2, generator=g)  # (12, 2)
    x1 = torch.randn(12, 2, generator=g)  # (12, 2)
    ids = torch.arange(12)  # (12,)
    first = random_pair(x0, x1, source_labels=(ids,), generator=_gen(4))
    second = random_pair(x0, x1, source_labels=(ids,), generator=_gen(4))
    assert torch.equal(first.source_index, second.source_index)
    assert sorted(first.source_index.tolist()) == list(range(12))
    assert torch.equal(first.target_index, torch.arange(12))
    assert torch.equal(first.source_labels[0], first.source_index)
    assert torch.equal(first.x0, x0[first.source_index])


def test_gradients_flow_through_the_paired_samples() -> None:
    g = _gen(11)
    x0 = torch.randn(6, 2, generator=g, requires_grad=True)  # (6, 2)
    x1 = torch.randn(6, 2, generator=g, requires_grad=True)  # (6, 2)
    pairing = ot_pair(x0, x1)
    ((pairing.x1 - pairing.x0) ** 2).sum().backward()
    assert x0.grad is not None and torch.count_nonzero(x0.grad) > 0
    assert x1.grad is not None and torch.count_nonzero(x1.grad) > 0


def test_squared_euclidean_cost_matches_the_definition() -> None:
    g = _gen(12)
    x0 = torch.randn(4, 3, generator=g)  # (4, 3)
    x1 = torch.randn(5, 3, generator=g)  # (5, 3)
    expected = ((x0[:, None, :] - x1[None, :, :]) ** 2).sum(-1).double()  # (4, 5)
    torch.testing.assert_close(squared_euclidean_cost(x0, x1), expected)


def test_invalid_inputs_are_rejected_with_clear_errors() -> None:
    x0 = torch.zeros(4, 2)  # (4, 2)
    x1 = torch.zeros(4, 2)  # (4, 2)
    with pytest.raises(TypeError, match="sequence of tensors"):
        ot_pair(x0, x1, target_labels=torch.arange(4))
    with pytest.raises(ValueError, match="4 rows"):
        ot_pair(x0, x1, target_labels=(torch.arange(3),))
    with pytest.raises(ValueError, match="same dimension"):
        random_pair(x0, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="2-D"):
        ot_pair(torch.zeros(4), x1)
    with pytest.raises(ValueError, match="n_pairs"):
        ot_pair(x0, x1, n_pairs=0)

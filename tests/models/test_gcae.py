"""The GCAE (docs/method.md §2.2) and the MLP ablation: shapes, gene order, padding, attention, accuracy.

Models are tiny (chunks of 8 genes, 32-d tokens) so every test runs in well under a few seconds on
one CPU thread; the accuracy test trains for a few hundred steps and must beat PCA on held-out
cells with the same latent size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from perturbflow.models.autoencoders import (
    Autoencoder,
    MLPAEConfig,
    MLPAutoencoder,
    reconstruction_loss,
)
from perturbflow.models.gcae import GCAE, GCAEConfig, sinusoidal_encoding

TINY = GCAEConfig(
    chunk_size=8, token_dim=32, n_heads=4, n_blocks=1, n_modules=4, latent_dim=6, mlp_ratio=2
)


def clustered_model(
    n_genes: int, seed: int = 0, config: GCAEConfig = TINY, n_clusters: int = 3
) -> GCAE:
    """A GCAE whose genes fall in ``n_clusters`` shuffled clusters with one-hot embeddings."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(n_clusters, size=n_genes)  # (G,)
    torch.manual_seed(seed)
    return GCAE(n_genes, np.argsort(labels, kind="stable"), np.eye(n_clusters)[labels], config)


@pytest.mark.parametrize("n_genes", [37, 101, 64])
def test_shapes_for_any_gene_count(n_genes):
    model = clustered_model(n_genes)
    x = torch.randn(5, n_genes)  # (B, G)
    z = model.encode(x)
    assert z.shape == (5, TINY.latent_dim)
    assert model.decode(z).shape == (5, n_genes)
    recon, code = model(x)
    assert recon.shape == (5, n_genes)
    assert torch.equal(code, z)
    assert model.n_chunks == -(-n_genes // TINY.chunk_size)


def test_chunks_hold_genes_in_grc_order_and_round_trip():
    model = clustered_model(37)
    x = torch.randn(4, 37)  # (B, G)
    chunks = model.to_chunks(x)  # (B, N, C)
    slots = model.chunk_genes()  # (N, C)
    real = slots >= 0
    assert int(real.sum()) == 37
    assert torch.equal(chunks[:, real], x[:, slots[real]])
    assert torch.all(chunks[:, ~real] == 0)
    assert torch.equal(model.from_chunks(chunks), x)


def test_decoder_returns_genes_in_caller_order():
    # A readout that writes each slot's position within its chunk: gene g must then come back
    # with the position it holds in GRC order, not with whatever sits at index g.
    model = clustered_model(37)
    with torch.no_grad():
        model.chunk_readout.weight.zero_()
        model.chunk_readout.bias.copy_(torch.arange(TINY.chunk_size, dtype=torch.float32))
    recon = model.decode(torch.randn(2, TINY.latent_dim))  # (B, G)
    grc_position = torch.argsort(model.gene_order)  # (G,) where each gene sits in GRC order
    expected = (grc_position % TINY.chunk_size).float()  # (G,)
    assert not torch.equal(model.gene_order, torch.arange(37))
    assert torch.equal(recon, expected.expand(2, -1))


def test_gene_order_is_only_a_relabelling():
    # A GCAE given order π on cells x must equal the same weights with identity order on x[:, π],
    # mapped back: the model sees genes in GRC order and answers in the caller's order.
    n_genes, n_clusters = 37, 3
    rng = np.random.default_rng(1)
    labels = rng.integers(n_clusters, size=n_genes)  # (G,)
    order = np.argsort(labels, kind="stable")  # (G,)
    embedding = np.eye(n_clusters)[labels]  # (G, K)
    torch.manual_seed(0)
    ordered_model = GCAE(n_genes, order, embedding, TINY)
    torch.manual_seed(0)
    presorted_model = GCAE(n_genes, None, embedding[order], TINY)
    x = torch.randn(6, n_genes)  # (B, G)
    recon, z = ordered_model(x)
    presorted_recon, presorted_z = presorted_model(x[:, order])
    torch.testing.assert_close(z, presorted_z)
    torch.testing.assert_close(recon[:, order], presorted_recon)


def test_padding_slots_never_reach_the_latent():
    model = clustered_model(37)  # 5 chunks of 8: the last holds 5 genes and 3 padding slots
    chunks = model.to_chunks(torch.randn(3, 37))  # (B, N, C)
    garbage = chunks.clone()
    garbage[:, -1, 5:] = torch.randn(3, 3) * 100.0
    torch.testing.assert_close(model.encode_chunks(garbage), model.encode_chunks(chunks))


def test_padding_is_excluded_from_chunk_cluster_embeddings():
    # Every gene carries the embedding (1, 2): a mean over padding would shrink the last chunk.
    torch.manual_seed(0)
    model = GCAE(37, None, np.tile([1.0, 2.0], (37, 1)), TINY)
    expected = torch.tensor([[1.0, 2.0]]).expand(model.n_chunks, -1)  # (N, E)
    torch.testing.assert_close(model.chunk_cluster_embedding, expected)


def test_padded_and_unpadded_gene_sets_give_the_same_relational_position():
    # The same 40 genes cut into chunks of 8 (no padding) or with 3 extra genes (padding): the
    # first five chunks hold identical genes, so their cluster means must agree.
    labels = np.repeat([0, 1, 2, 3, 4], 8)  # (40,)
    extra = np.array([4, 4, 4])  # (3,)
    full = GCAE(40, None, np.eye(5)[labels], TINY)
    padded = GCAE(43, None, np.eye(5)[np.concatenate([labels, extra])], TINY)
    torch.testing.assert_close(padded.chunk_cluster_embedding[:5], full.chunk_cluster_embedding)
    torch.testing.assert_close(padded.chunk_cluster_embedding[5], torch.eye(5)[4])


def test_without_cluster_embedding_only_the_sinusoid_positions_chunks():
    torch.manual_seed(0)
    model = GCAE(37, None, None, TINY)
    assert model.cluster_projection is None
    torch.testing.assert_close(model.relational_position(), sinusoidal_encoding(5, 32))
    assert model(torch.randn(2, 37))[0].shape == (2, 37)


def test_sinusoidal_encoding_starts_at_sine_zero_cosine_one():
    encoding = sinusoidal_encoding(4, 6)  # (N, D)
    torch.testing.assert_close(encoding[0], torch.tensor([0.0, 1.0] * 3))
    torch.testing.assert_close(encoding[:, 0], torch.sin(torch.arange(4.0)))


def test_attention_maps_have_the_documented_shapes_and_rows_summing_to_one():
    config = GCAEConfig(
        chunk_size=8, token_dim=32, n_heads=4, n_blocks=2, n_modules=3, latent_dim=6, dropout=0.2
    )
    model = clustered_model(37, config=config)  # N = 5 chunks
    x = torch.randn(2, 37)  # (B, G)
    attention = model.attention_maps(x)
    assert model.training  # restored after the eval-mode pass
    assert len(attention.encoder) == len(attention.decoder) == 2
    for block in attention.encoder + attention.decoder:
        assert block.modules_from_chunks.shape == (2, 4, 3, 5)
        assert block.modules_from_modules.shape == (2, 4, 3, 3)
        assert block.chunks_from_modules.shape == (2, 4, 5, 3)
        for weights in (
            block.modules_from_chunks,
            block.modules_from_modules,
            block.chunks_from_modules,
        ):
            torch.testing.assert_close(weights.sum(dim=-1), torch.ones(weights.shape[:-1]))
            assert torch.all(weights >= 0)

    model.eval()
    recon, z, returned = model(x, return_attention=True)
    plain_recon, plain_z = model(x)
    torch.testing.assert_close(recon, plain_recon)
    torch.testing.assert_close(z, plain_z)
    torch.testing.assert_close(
        returned.encoder[1].chunks_from_modules, attention.encoder[1].chunks_from_modules
    )


def test_same_seed_same_model_other_seed_other_model():
    x = torch.randn(3, 37)  # (B, G)
    first, second = clustered_model(37, seed=0), clustered_model(37, seed=0)
    torch.manual_seed(1)
    other = GCAE(37, first.gene_order, None, TINY)
    recon, z = first(x)
    again, z_again = second(x)
    assert torch.equal(recon, again)
    assert torch.equal(z, z_again)
    assert not torch.allclose(other(x)[0], recon)


def test_state_dict_carries_order_and_clusters():
    source = clustered_model(37, seed=3)
    torch.manual_seed(5)
    target = GCAE(37, None, np.zeros((37, 3)), TINY)
    target.load_state_dict(source.state_dict())
    x = torch.randn(2, 37)  # (B, G)
    assert torch.equal(target.gene_order, source.gene_order)
    torch.testing.assert_close(target(x)[0], source(x)[0])


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        GCAEConfig(token_dim=30, n_heads=4)
    with pytest.raises(ValueError, match="permutation"):
        GCAE(5, [0, 1, 1, 3, 4], None, TINY)
    with pytest.raises(ValueError, match="shape"):
        GCAE(5, None, np.zeros((4, 2)), TINY)
    with pytest.raises(ValueError, match="cluster_embedding_dim"):
        GCAE(5, None, np.zeros((5, 2)), GCAEConfig(chunk_size=8, cluster_embedding_dim=3))
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        GCAE(5, None, None, TINY).encode(torch.zeros(2, 6))


def test_mlp_autoencoder_shares_the_interface():
    torch.manual_seed(0)
    model = MLPAutoencoder(37, MLPAEConfig(hidden_dims=(16, 8), latent_dim=4, dropout=0.1))
    x = torch.randn(5, 37)  # (B, G)
    recon, z = model(x)
    assert recon.shape == (5, 37)
    assert z.shape == model.encode(x).shape == (5, 4)
    assert model.decode(z).shape == (5, 37)
    assert isinstance(model, Autoencoder)
    assert isinstance(clustered_model(37), Autoencoder)


def test_reconstruction_loss_is_the_mean_squared_error():
    x = torch.zeros(2, 3)  # (B, G)
    recon = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])  # (B, G)
    torch.testing.assert_close(reconstruction_loss(recon, x), torch.tensor(5.0 / 6.0))


def test_gcae_reconstructs_held_out_cells_better_than_pca(simulated_screen):
    n_latent = 4
    adata = simulated_screen("tiny", n_genes=64, n_doubles=6, n_control_cells=400)
    expression = np.asarray(adata.X, dtype=np.float32)  # (cells, G)
    cells = np.random.default_rng(0).permutation(len(expression))
    test, train = cells[: len(cells) // 4], cells[len(cells) // 4 :]
    # Centre on training means, as PCA does internally; neither method sees a test cell before.
    expression = expression - expression[train].mean(axis=0)  # (cells, G)

    pca = PCA(n_components=n_latent).fit(expression[train])
    pca_recon = pca.inverse_transform(pca.transform(expression[test]))  # (test, G)
    pca_mse = float(np.mean((pca_recon - expression[test]) ** 2))

    program = adata.var["program"].to_numpy()  # (G,)
    config = GCAEConfig(
        chunk_size=8,
        token_dim=32,
        n_heads=4,
        n_blocks=1,
        n_modules=4,
        latent_dim=n_latent,
        mlp_ratio=4,
    )
    torch.manual_seed(0)
    model = GCAE(64, np.argsort(program, kind="stable"), np.eye(4)[program], config)
    train_x = torch.from_numpy(expression[train])  # (train, G)
    test_x = torch.from_numpy(expression[test])  # (test, G)
    # With batches of 64 the held-out MSE ends 5-7% below PCA's for seeds 0-4 (the seeds of
    # the split, the weights and the batches); larger batches cost more per step.
    n_steps, batch_size = 400, 64
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, foreach=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=n_steps)
    generator = torch.Generator().manual_seed(0)
    for _ in range(n_steps):
        batch = train_x[torch.randint(len(train_x), (batch_size,), generator=generator)]
        loss = reconstruction_loss(model(batch)[0], batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        gcae_mse = reconstruction_loss(model(test_x)[0], test_x).item()
    assert gcae_mse < pca_mse, f"GCAE held-out MSE {gcae_mse:.4f} ≥ PCA {pca_mse:.4f}"

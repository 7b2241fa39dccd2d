"""The Gene-Cluster-Aware AutoEncoder (GCAE) of docs/method.md §2.2, a pure torch module on tensors.

Genes are put in Gene-Relation-Clustering order (genes sorted by cluster), zero-padded to a
multiple of ``chunk_size`` and cut into chunks; each chunk becomes one token. A relational
positional encoding tells every token which gene clusters it holds (a projection of the mean
cluster embedding of its genes) and where it sits (a sinusoid over chunk index). Blocks of
*module-induced attention* (Perceiver-style) then route information through ``n_modules`` learnable
module tokens: modules ← chunks, modules ↔ modules, chunks ← modules. Mean-pooled chunk tokens give
the latent code; a mirrored decoder maps it back to every gene, in the caller's gene order.

Padding never reaches the output: padded input slots are multiplied by a mask before the chunk
embedding, excluded from the cluster-embedding means, and padded output slots are dropped.

Shapes: B cells, G genes, C ``chunk_size``, N chunks (``ceil(G / C)``), D ``token_dim``,
M ``n_modules``, H ``n_heads``, E cluster-embedding dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class GCAEConfig:
    """Architecture of the GCAE; defaults are scBIG's published settings.

    Attributes:
        chunk_size: genes per chunk (one token per chunk).
        token_dim: width D of chunk and module tokens; a multiple of ``n_heads`` and even (the
            sinusoidal position term alternates sine and cosine).
        n_heads: attention heads in every attention layer.
        n_blocks: module-induced attention blocks in the encoder; the decoder mirrors them.
        n_modules: learnable module tokens M (inducing points); the number of GRC clusters K is
            a good alternative to scBIG's 8.
        latent_dim: size of the latent code.
        mlp_ratio: hidden width of every token MLP, as a multiple of ``token_dim``.
        dropout: dropout on attention weights and inside the MLPs (0 disables it).
        cluster_embedding_dim: dimension E of the per-gene cluster embeddings given to
            :class:`GCAE`; ``None`` infers it from them. When set, it must match.
    """

    chunk_size: int = 64
    token_dim: int = 256
    n_heads: int = 8
    n_blocks: int = 3
    n_modules: int = 8
    latent_dim: int = 50
    mlp_ratio: int = 2
    dropout: float = 0.0
    cluster_embedding_dim: int | None = None

    def __post_init__(self) -> None:
        for name in ("chunk_size", "token_dim", "n_heads", "n_blocks", "n_modules", "latent_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.mlp_ratio < 1:
            raise ValueError(f"mlp_ratio must be at least 1, got {self.mlp_ratio}")
        if self.token_dim % self.n_heads != 0:
            raise ValueError(
                f"token_dim ({self.token_dim}) must be a multiple of n_heads ({self.n_heads})"
            )
        if self.token_dim % 2 != 0:
            raise ValueError(f"token_dim must be even (sine/cosine pairs), got {self.token_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.cluster_embedding_dim is not None and self.cluster_embedding_dim < 1:
            raise ValueError(
                f"cluster_embedding_dim must be at least 1 or None, got {self.cluster_embedding_dim}"
            )


@dataclass(frozen=True)
class BlockAttention:
    """Attention weights of one module-induced attention block, rows summing to 1.

    Attributes:
        modules_from_chunks: (B, H, M, N) — how much each module reads from each chunk.
        modules_from_modules: (B, H, M, M) — module self-attention.
        chunks_from_modules: (B, H, N, M) — how much each chunk reads from each module.
    """

    modules_from_chunks: torch.Tensor
    modules_from_modules: torch.Tensor
    chunks_from_modules: torch.Tensor


@dataclass(frozen=True)
class GCAEAttention:
    """Per-block attention weights of a full encode → decode pass, for interpretation."""

    encoder: tuple[BlockAttention, ...]
    decoder: tuple[BlockAttention, ...]


def sinusoidal_encoding(n_positions: int, dim: int) -> torch.Tensor:
    """The fixed transformer position code: (n_positions, dim), sine on even, cosine on odd columns."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (N, 1)
    frequency = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )  # (D/2,)
    encoding = torch.zeros(n_positions, dim)  # (N, D)
    encoding[:, 0::2] = torch.sin(position * frequency)  # (N, D/2)
    encoding[:, 1::2] = torch.cos(position * frequency)  # (N, D/2)
    return encoding  # (N, D)


class _TokenMLP(nn.Sequential):
    """Linear → GELU → (dropout) → linear, applied token-wise."""

    def __init__(self, dim: int, mlp_ratio: int, dropout: float) -> None:
        layers: list[nn.Module] = [nn.Linear(dim, dim * mlp_ratio), nn.GELU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(dim * mlp_ratio, dim))
        super().__init__(*layers)


class ModuleInducedAttentionBlock(nn.Module):
    """modules ← chunks, modules ↔ modules, chunks ← modules; pre-norm residuals with MLPs.

    Pre-norm (LayerNorm before each attention / MLP, residual around it) keeps the small CPU
    schedules stable; the encoder stack adds a final LayerNorm (see :class:`ModuleAttentionStack`).
    """

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()

        def attention() -> nn.MultiheadAttention:
            return nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)

        self.modules_query_norm = nn.LayerNorm(dim)
        self.chunks_key_norm = nn.LayerNorm(dim)
        self.modules_from_chunks = attention()
        self.modules_self_norm = nn.LayerNorm(dim)
        self.modules_from_modules = attention()
        self.modules_mlp_norm = nn.LayerNorm(dim)
        self.modules_mlp = _TokenMLP(dim, mlp_ratio, dropout)
        self.chunks_query_norm = nn.LayerNorm(dim)
        self.modules_key_norm = nn.LayerNorm(dim)
        self.chunks_from_modules = attention()
        self.chunks_mlp_norm = nn.LayerNorm(dim)
        self.chunks_mlp = _TokenMLP(dim, mlp_ratio, dropout)

    def forward(
        self, chunks: torch.Tensor, modules: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, BlockAttention | None]:
        """Update ``chunks`` (B, N, D) and ``modules`` (B, M, D); weights when ``need_weights``."""
        weights = {"need_weights": need_weights, "average_attn_weights": False}

        query = self.modules_query_norm(modules)  # (B, M, D)
        keys = self.chunks_key_norm(chunks)  # (B, N, D)
        update, read = self.modules_from_chunks(query, keys, keys, **weights)  # (B, M, D)
        modules = modules + update  # (B, M, D)

        query = self.modules_self_norm(modules)  # (B, M, D)
        update, mixed = self.modules_from_modules(query, query, query, **weights)  # (B, M, D)
        modules = modules + update  # (B, M, D)
        modules = modules + self.modules_mlp(self.modules_mlp_norm(modules))  # (B, M, D)

        query = self.chunks_query_norm(chunks)  # (B, N, D)
        keys = self.modules_key_norm(modules)  # (B, M, D)
        update, written = self.chunks_from_modules(query, keys, keys, **weights)  # (B, N, D)
        chunks = chunks + update  # (B, N, D)
        chunks = chunks + self.chunks_mlp(self.chunks_mlp_norm(chunks))  # (B, N, D)

        attention = BlockAttention(read, mixed, written) if need_weights else None
        return chunks, modules, attention  # (B, N, D), (B, M, D)


class ModuleAttentionStack(nn.Module):
    """Learnable module tokens carried through ``n_blocks`` blocks, optionally a final LayerNorm.

    The module tokens keep their identity across blocks (Perceiver's latent array), so module m
    means the same thing in every block's attention map. The encoder normalises its output tokens
    before pooling; the decoder reads values straight from the residual stream, because a final
    LayerNorm would rescale every chunk token to unit norm and hide how strongly a chunk is
    expressed from the linear readout (it reconstructs markedly worse with it).
    """

    def __init__(self, config: GCAEConfig, final_norm: bool) -> None:
        super().__init__()
        module_tokens = torch.randn(config.n_modules, config.token_dim) * 0.02  # (M, D)
        self.module_tokens = nn.Parameter(module_tokens)  # (M, D)
        self.blocks = nn.ModuleList(
            ModuleInducedAttentionBlock(
                config.token_dim, config.n_heads, config.mlp_ratio, config.dropout
            )
            for _ in range(config.n_blocks)
        )
        self.final_norm = nn.LayerNorm(config.token_dim) if final_norm else nn.Identity()

    def forward(
        self, chunks: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, tuple[BlockAttention, ...]]:
        """(B, N, D) chunk tokens → (B, N, D) updated tokens and per-block attention (if asked)."""
        modules = self.module_tokens.expand(chunks.shape[0], -1, -1)  # (B, M, D)
        maps = []
        for block in self.blocks:
            chunks, modules, attention = block(chunks, modules, need_weights)  # (B, N, D)
            if attention is not None:
                maps.append(attention)
        return self.final_norm(chunks), tuple(maps)  # (B, N, D)


class GCAE(nn.Module):
    """Gene-Cluster-Aware AutoEncoder: (B, G) expression ↔ (B, latent_dim) codes.

    Args:
        n_genes: number of genes G.
        gene_order: (G,) permutation of ``range(G)``, the GRC order (genes sorted by cluster);
            position i of the chunked sequence holds gene ``gene_order[i]``. ``None`` keeps the
            given order (the "random clusters" ablation passes a random permutation).
        gene_cluster_embedding: (G, E) embedding of each gene's cluster (its centroid), rows in the
            caller's gene order; ``None`` drops the cluster term of the positional encoding.
        config: architecture, see :class:`GCAEConfig`.

    Gene order, padding mask and chunk cluster embeddings are buffers, so a ``state_dict`` carries
    them: a module rebuilt with the same shapes (any order, any embedding of the same dimension)
    and loaded from it runs exactly as the saved one.
    """

    def __init__(
        self,
        n_genes: int,
        gene_order: torch.Tensor | np.ndarray | None = None,
        gene_cluster_embedding: torch.Tensor | np.ndarray | None = None,
        config: GCAEConfig | None = None,
    ) -> None:
        super().__init__()
        if n_genes < 1:
            raise ValueError(f"n_genes must be at least 1, got {n_genes}")
        self.config = config or GCAEConfig()
        self.n_genes = int(n_genes)
        self.latent_dim = self.config.latent_dim
        chunk_size, dim = self.config.chunk_size, self.config.token_dim
        self.n_chunks = math.ceil(self.n_genes / chunk_size)
        self.n_padding = self.n_chunks * chunk_size - self.n_genes

        order = _validated_order(gene_order, self.n_genes)  # (G,)
        self.register_buffer("gene_order", order)  # (G,)
        self.register_buffer("inverse_order", torch.argsort(order))  # (G,)
        slot_is_gene = torch.arange(self.n_chunks * chunk_size) < self.n_genes  # (N*C,)
        chunk_mask = slot_is_gene.view(self.n_chunks, chunk_size).float()  # (N, C)
        self.register_buffer("chunk_mask", chunk_mask)  # (N, C) 1 for genes, 0 for padding
        self.register_buffer("chunk_position", sinusoidal_encoding(self.n_chunks, dim))  # (N, D)

        cluster = self._chunk_cluster_embedding(gene_cluster_embedding, order)  # (N, E) or None
        if cluster is None:
            self.register_buffer("chunk_cluster_embedding", None)
            self.cluster_projection = None
        else:
            self.register_buffer("chunk_cluster_embedding", cluster)  # (N, E)
            self.cluster_projection = nn.Linear(cluster.shape[1], dim)

        self.chunk_embedding = nn.Linear(chunk_size, dim)
        self.encoder_stack = ModuleAttentionStack(self.config, final_norm=True)
        self.to_latent = nn.Linear(dim, self.latent_dim)

        self.chunk_query = nn.Parameter(torch.randn(self.n_chunks, dim) * 0.02)  # (N, D)
        # One D-vector per chunk (not one broadcast to all): it gives the decoder a direct,
        # chunk-specific path from the latent and reconstructed better on average in our tests.
        self.from_latent = nn.Linear(self.latent_dim, self.n_chunks * dim)  # latent → (N*D)
        self.decoder_stack = ModuleAttentionStack(self.config, final_norm=False)
        self.chunk_readout = nn.Linear(dim, chunk_size)

    def _chunk_cluster_embedding(
        self, gene_cluster_embedding: torch.Tensor | np.ndarray | None, order: torch.Tensor
    ) -> torch.Tensor | None:
        """(G, E) per-gene cluster embeddings → (N, E) mean over each chunk's real genes."""
        expected = self.config.cluster_embedding_dim
        if gene_cluster_embedding is None:
            if expected is not None:
                raise ValueError(
                    f"config.cluster_embedding_dim is {expected} but no gene_cluster_embedding "
                    "was given; pass the embedding or set cluster_embedding_dim=None"
                )
            return None
        embedding = _as_cpu_tensor(gene_cluster_embedding).float()  # (G, E)
        if embedding.ndim != 2 or embedding.shape[0] != self.n_genes:
            raise ValueError(
                f"gene_cluster_embedding must have shape (n_genes={self.n_genes}, E), "
                f"got {tuple(embedding.shape)}"
            )
        if expected is not None and embedding.shape[1] != expected:
            raise ValueError(
                f"gene_cluster_embedding has dimension {embedding.shape[1]} but "
                f"config.cluster_embedding_dim is {expected}"
            )
        ordered = embedding[order]  # (G, E)
        padded = nn.functional.pad(ordered, (0, 0, 0, self.n_padding))  # (N*C, E)
        chunked = padded.view(self.n_chunks, self.config.chunk_size, -1)  # (N, C, E)
        n_real = self.chunk_mask.sum(dim=1, keepdim=True)  # (N, 1)
        return chunked.sum(dim=1) / n_real  # (N, E) padded rows are zero, so excluded

    def relational_position(self) -> torch.Tensor:
        """(N, D) positional encoding: projected chunk cluster embedding + chunk-index sinusoid."""
        if self.cluster_projection is None:
            return self.chunk_position  # (N, D)
        cluster_term = self.cluster_projection(self.chunk_cluster_embedding)  # (N, D)
        return cluster_term + self.chunk_position  # (N, D)

    def chunk_genes(self) -> torch.Tensor:
        """(N, C) original gene index in every chunk slot, -1 for padding (for interpretation)."""
        padding = self.gene_order.new_full((self.n_padding,), -1)  # (P,)
        return torch.cat([self.gene_order, padding]).view(self.n_chunks, -1)  # (N, C)

    def to_chunks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, G) expression in caller order → (B, N, C) GRC-ordered chunks, padding zero."""
        if x.ndim != 2 or x.shape[1] != self.n_genes:
            raise ValueError(f"expected x of shape (B, {self.n_genes}), got {tuple(x.shape)}")
        ordered = x[:, self.gene_order]  # (B, G)
        padded = nn.functional.pad(ordered, (0, self.n_padding))  # (B, N*C)
        return padded.view(x.shape[0], self.n_chunks, self.config.chunk_size)  # (B, N, C)

    def from_chunks(self, chunks: torch.Tensor) -> torch.Tensor:
        """(B, N, C) GRC-ordered chunks → (B, G) in caller order, padding slots dropped."""
        flat = chunks.reshape(chunks.shape[0], -1)[:, : self.n_genes]  # (B, G) GRC order
        return flat[:, self.inverse_order]  # (B, G) caller order

    def encode_chunks(
        self, chunks: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[BlockAttention, ...]]:
        """(B, N, C) chunks → (B, latent_dim); whatever sits in padding slots is ignored."""
        chunks = chunks * self.chunk_mask  # (B, N, C) padding cannot leak in
        tokens = self.chunk_embedding(chunks) + self.relational_position()  # (B, N, D)
        tokens, maps = self.encoder_stack(tokens, need_weights=return_attention)  # (B, N, D)
        z = self.to_latent(tokens.mean(dim=1))  # (B, latent)
        return (z, maps) if return_attention else z  # (B, latent)

    def decode_chunks(
        self, z: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[BlockAttention, ...]]:
        """(B, latent_dim) → (B, N, C) GRC-ordered chunk values (padding slots included)."""
        query = self.chunk_query + self.relational_position()  # (N, D)
        per_chunk = self.from_latent(z).view(z.shape[0], self.n_chunks, -1)  # (B, N, D)
        tokens = query + per_chunk  # (B, N, D)
        tokens, maps = self.decoder_stack(tokens, need_weights=return_attention)  # (B, N, D)
        chunks = self.chunk_readout(tokens)  # (B, N, C)
        return (chunks, maps) if return_attention else chunks  # (B, N, C)

    def encode(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[BlockAttention, ...]]:
        """(B, G) expression → (B, latent_dim) codes (and encoder attention per block)."""
        return self.encode_chunks(self.to_chunks(x), return_attention)  # (B, latent)

    def decode(
        self, z: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[BlockAttention, ...]]:
        """(B, latent_dim) codes → (B, G) expression in caller order (and decoder attention)."""
        if not return_attention:
            return self.from_chunks(self.decode_chunks(z))  # (B, G)
        chunks, maps = self.decode_chunks(z, return_attention=True)  # (B, N, C)
        return self.from_chunks(chunks), maps  # (B, G)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, GCAEAttention]:
        """Return ``(recon (B, G), z (B, latent_dim))``, plus :class:`GCAEAttention` if asked."""
        if not return_attention:
            z = self.encode(x)  # (B, latent)
            return self.decode(z), z  # (B, G), (B, latent)
        z, encoder_maps = self.encode(x, return_attention=True)  # (B, latent)
        recon, decoder_maps = self.decode(z, return_attention=True)  # (B, G)
        return recon, z, GCAEAttention(encoder_maps, decoder_maps)  # (B, G), (B, latent)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> GCAEAttention:
        """Attention weights of every block for cells ``x`` (B, G), computed in eval mode.

        Eval mode keeps dropout off the returned weights; the training mode is restored after.
        """
        was_training = self.training
        self.eval()
        try:
            _, _, attention = self(x, return_attention=True)
        finally:
            self.train(was_training)
        return attention


def _validated_order(gene_order: torch.Tensor | np.ndarray | None, n_genes: int) -> torch.Tensor:
    """The gene order as a (G,) LongTensor, checked to be a permutation of ``range(G)``."""
    if gene_order is None:
        return torch.arange(n_genes)  # (G,)
    order = _as_cpu_tensor(gene_order).long().flatten()  # (G,)
    if order.numel() != n_genes or not torch.equal(torch.sort(order).values, torch.arange(n_genes)):
        raise ValueError(
            f"gene_order must be a permutation of range(n_genes={n_genes}): every gene index "
            f"exactly once; got {order.numel()} entries, {order.unique().numel()} distinct"
        )
    return order  # (G,)


def _as_cpu_tensor(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A detached CPU tensor copy of an array or tensor; buffers move with ``.to(device)``."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().clone()  # same shape
    return torch.as_tensor(np.array(values))  # same shape (a copy: program arrays are read-only)

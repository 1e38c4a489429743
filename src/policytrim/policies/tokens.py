"""Token-decoding action heads of TinyVLA: actions as discrete tokens, as OpenVLA does.

Tokenisation (OpenVLA's scheme). Each action dimension is discretised into ``bins`` (256) uniform
bins over the normalised action range [-1, 1] (Meta-World's actions are already normalised to it);
a token is the index of its bin and decodes to the bin's centre. A chunk of H actions of A dims is
``n = H·A`` tokens, row-major (row 0 dims 0..A-1, then row 1, ...). The edges travel in the policy
spec (`ActionBins.edges`).

Two decoders over the same tokens, both a small pre-norm transformer whose first token is the
observation context [B, C]:

- `ParallelTokenHead` (OpenVLA-OFT style): n learned placeholder queries after the context token,
  bidirectional attention, all n tokens predicted in one forward pass.
- `AutoregressiveTokenHead` (OpenVLA style): token i is predicted from the context and tokens
  0..i-1 under a causal mask; sampling runs n one-token steps with a KV-cache, then scores the
  tokens with one teacher-forced causal pass (what `logits` computes), so a recorded log-prob and
  the learner's recomputation are the same computation.

Probabilities. Sampling (``train`` and ``sampled`` modes) draws each token from
softmax(logits / temperature) by inverse CDF on uniforms the caller draws per row (so a row's
tokens do not depend on its batch); ``deterministic`` takes the argmax. The log-prob of a row is the
sum of its A tokens' log-probs under that tempered distribution, and `token_log_prob` recomputes it
from the stored tokens. Behaviour cloning is the cross-entropy of the demonstration's bins at
temperature 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from policytrim.errors import InputError

TOKEN_HEADS = ("token_parallel", "token_ar")
DEFAULT_BINS = 256  # OpenVLA's bins per action dimension


class ActionBins:
    """Per-dimension discretisation: ``edges`` (bins + 1 increasing floats) shared by every dim.

    encode: actions [..., A] -> long tokens [..., A] (values outside the range go to the end bins);
    decode: tokens -> bin centres [..., A] (float64 unless ``dtype`` is given)."""

    def __init__(self, edges: Sequence[float]):
        e = torch.as_tensor([float(x) for x in edges], dtype=torch.float64)
        if e.dim() != 1 or e.numel() < 3 or not bool(torch.isfinite(e).all()) or not bool((e[1:] > e[:-1]).all()):
            raise InputError(
                f"token bin edges must be at least 3 strictly increasing finite numbers, got {e.numel()} values"
            )
        self.edges = e
        self.centres = 0.5 * (e[1:] + e[:-1])

    @classmethod
    def uniform(cls, low: float, high: float, bins: int = DEFAULT_BINS) -> ActionBins:
        if not (isinstance(bins, int) and bins >= 2):
            raise InputError(f"token bins must be an integer >= 2, got {bins!r}")
        return cls(torch.linspace(float(low), float(high), bins + 1, dtype=torch.float64).tolist())

    @property
    def count(self) -> int:
        return int(self.centres.numel())

    def encode(self, actions: torch.Tensor) -> torch.Tensor:
        inner = self.edges[1:-1].to(actions.device)
        return torch.bucketize(actions.to(torch.float64).contiguous(), inner, right=True)

    def decode(self, tokens: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return self.centres.to(tokens.device)[tokens].to(dtype)


def token_log_prob(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-token log-probs [B, n] of ``tokens`` (long [B, n]) under softmax(logits [B, n, V] / T)."""
    return F.log_softmax(logits / temperature, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def pick_tokens(logits: torch.Tensor, uniforms: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Tokens long [...] from logits [..., V]: the argmax when ``uniforms`` is None, else the
    inverse CDF of softmax(logits / T) at ``uniforms`` [...] (float64 in [0, 1))."""
    if uniforms is None:
        return logits.argmax(-1)
    cdf = torch.softmax(logits.to(torch.float64) / temperature, dim=-1).cumsum(-1)
    u = uniforms.to(cdf.device, torch.float64).unsqueeze(-1) * cdf[..., -1:]
    return (cdf <= u).sum(-1).clamp(max=logits.shape[-1] - 1)


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN x), then x + MLP(LN x). No dropout (exact replay)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, causal: bool, cache: list[torch.Tensor] | None = None) -> torch.Tensor:
        """x [B, n, d]. With ``cache`` (a list, empty at the first call): x holds the next position(s)
        only, keys and values of the earlier ones come from the cache, which is extended in place."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        att = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class _TokenTransformer(nn.Module):
    """[context token; n inputs] -> logits over the bins, shared by both heads."""

    def __init__(
        self, context_dim: int, chunk_size: int, action_dim: int, bins: int, dim: int, layers: int, heads: int
    ):
        super().__init__()
        if dim % heads:
            raise InputError(f"token head width {dim} must be divisible by its {heads} attention heads")
        self.chunk_size, self.action_dim, self.bins = chunk_size, action_dim, bins
        self.n = chunk_size * action_dim
        self.context = nn.Linear(context_dim, dim)
        self.position = nn.Parameter(torch.randn(self.n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, bins)

    def run(self, context: torch.Tensor, inputs: torch.Tensor, causal: bool) -> torch.Tensor:
        """context [B, C], inputs [B, m, dim] -> logits [B, m + 1, V] (position 0 = the context)."""
        x = torch.cat([self.context(context).unsqueeze(1), inputs], dim=1)
        x = x + self.position[: x.shape[1]]
        for block in self.blocks:
            x = block(x, causal)
        return self.out(self.norm(x))

    def step(self, x: torch.Tensor, position: int, caches: list[list[torch.Tensor]]) -> torch.Tensor:
        """One more position: its input [B, dim] -> its logits [B, V], attending to the cached ones."""
        h = (x + self.position[position]).unsqueeze(1)
        for block, cache in zip(self.blocks, caches, strict=True):
            h = block(h, causal=False, cache=cache)  # one query: it may see every cached position
        return self.out(self.norm(h))[:, 0]

    def row_log_prob(self, logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
        """logits [B, n, V], tokens [B, n] -> per-row log-probs [B, H] (sum over the A dims)."""
        return token_log_prob(logits, tokens, temperature).reshape(-1, self.chunk_size, self.action_dim).sum(-1)


class ParallelTokenHead(_TokenTransformer):
    """OFT-style: learned placeholder queries, bidirectional attention, one pass for all n tokens."""

    def __init__(
        self, context_dim: int, chunk_size: int, action_dim: int, bins: int, dim: int, layers: int, heads: int
    ):
        super().__init__(context_dim, chunk_size, action_dim, bins, dim, layers, heads)
        self.queries = nn.Parameter(torch.randn(self.n, dim) * 0.02)

    def logits(self, context: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, n, V] of every token (``tokens`` is ignored: the queries are placeholders)."""
        queries = self.queries.unsqueeze(0).expand(context.shape[0], -1, -1)
        return self.run(context, queries, causal=False)[:, 1:]

    def decode(
        self, context: torch.Tensor, uniforms: torch.Tensor | None, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens long [B, n], their logits [B, n, V]): argmax (uniforms None) or sampled at
        ``uniforms`` [B, n], from one forward pass."""
        logits = self.logits(context)
        return pick_tokens(logits, uniforms, temperature), logits


class AutoregressiveTokenHead(_TokenTransformer):
    """OpenVLA-style: token i from the context and tokens 0..i-1 (causal mask)."""

    def __init__(
        self, context_dim: int, chunk_size: int, action_dim: int, bins: int, dim: int, layers: int, heads: int
    ):
        super().__init__(context_dim, chunk_size, action_dim, bins, dim, layers, heads)
        self.embed = nn.Embedding(bins, dim)

    def logits(self, context: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, n, V]: position i sees tokens [B, n] 0..i-1 only."""
        return self.run(context, self.embed(tokens[:, : self.n - 1]), causal=True)

    def decode(
        self, context: torch.Tensor, uniforms: torch.Tensor | None, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens long [B, n], their teacher-forced logits [B, n, V]): tokens one at a time (n
        one-position steps with a KV-cache), then the logits as `logits` computes them, so a
        recorded log-prob and its recomputation are the same computation."""
        caches: list[list[torch.Tensor]] = [[] for _ in self.blocks]
        x = self.context(context)
        picked = []
        for i in range(self.n):
            u = None if uniforms is None else uniforms[:, i]
            picked.append(pick_tokens(self.step(x, i, caches), u, temperature))
            x = self.embed(picked[-1])
        tokens = torch.stack(picked, dim=1)
        return tokens, self.logits(context, tokens)


def build_token_head(
    kind: str, context_dim: int, chunk_size: int, action_dim: int, bins: int, dim: int, layers: int, heads: int
) -> _TokenTransformer:
    """The token head ``kind`` (one of `TOKEN_HEADS`)."""
    if kind == "token_parallel":
        return ParallelTokenHead(context_dim, chunk_size, action_dim, bins, dim, layers, heads)
    if kind == "token_ar":
        return AutoregressiveTokenHead(context_dim, chunk_size, action_dim, bins, dim, layers, heads)
    raise InputError(f"token head must be one of {', '.join(TOKEN_HEADS)}, got {kind!r}")


def draw_uniforms(generators: Sequence[torch.Generator] | None, batch: int, count: int) -> torch.Tensor:
    """Uniforms float64 [B, count], row b from ``generators[b]`` (None: torch's global generator)."""
    gens = list(generators) if generators is not None else [None] * batch
    if len(gens) != batch:
        raise ValueError(f"need one generator per batch row: got {len(gens)} for batch {batch}")
    if batch == 0:
        return torch.zeros(0, count, dtype=torch.float64)
    return torch.stack([torch.rand((count,), generator=g, dtype=torch.float64) for g in gens])


__all__ = [
    "DEFAULT_BINS",
    "TOKEN_HEADS",
    "ActionBins",
    "AutoregressiveTokenHead",
    "ParallelTokenHead",
    "build_token_head",
    "draw_uniforms",
    "pick_tokens",
    "token_log_prob",
]

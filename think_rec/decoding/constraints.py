"""``SIDConstrainedLogitsProcessor``: keep generation on the ``SIDTrie`` (catalog items only)."""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import torch
from transformers import LogitsProcessor

from .trie import SIDTrie


class SIDConstrainedLogitsProcessor(LogitsProcessor):
    """Set to -inf every logit that would leave the trie after the generated prefix.

    Rows are ``batch * beams`` (row ``r`` serves request ``r // (rows // len(excluded))``).
    ``excluded`` holds one set of banned item ids per request. With ``start_after`` (token ids,
    e.g. those of ``</think>``), generation is free until that marker and constrained from there;
    once an item is complete only ``end_token_id`` is allowed (if given, else the row is free).
    """

    def __init__(self, trie: SIDTrie, prompt_len: int, excluded: Sequence[Iterable[str]] | None = None,
                 start_after: Sequence[int] | None = None, end_token_id: int | None = None):
        self.trie = trie
        self.prompt_len = prompt_len
        self.banned = [trie.banned_counts(ex) for ex in excluded] if excluded else None
        self.start_after = tuple(start_after) if start_after else None
        self.end_token_id = end_token_id
        self._cache: dict[tuple[int, tuple[int, ...]], torch.Tensor | None] = {}

    def _prefix(self, row: tuple[int, ...]) -> tuple[int, ...] | None:
        """Constrained part of a generated row, or None while generation is still free."""
        if self.start_after is None:
            return row
        m = len(self.start_after)
        for i in range(len(row) - m, -1, -1):
            if row[i:i + m] == self.start_after:
                return row[i + m:]
        return None

    def _allowed(self, request: int, prefix: tuple[int, ...]) -> torch.Tensor | None:
        key = (request, prefix)
        if key not in self._cache:
            banned: Counter | None = self.banned[request] if self.banned else None
            if self.trie.item_at(prefix) is not None:
                allowed = None if self.end_token_id is None else torch.tensor([self.end_token_id])
            else:
                allowed = self.trie.allowed(prefix, banned)
            self._cache[key] = allowed
        return self._cache[key]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = input_ids.shape[0]
        per_request = rows // len(self.banned) if self.banned else rows
        generated = input_ids[:, self.prompt_len:].tolist()
        row_idx, cols, free = [], [], []
        for r, row in enumerate(generated):
            prefix = self._prefix(tuple(row))
            allowed = None if prefix is None else self._allowed(r // per_request, prefix)
            if allowed is None:
                free.append(r)
            else:
                row_idx.append(torch.full((len(allowed),), r, dtype=torch.long))
                cols.append(allowed)
        mask = torch.full_like(scores, float("-inf"))
        if cols:
            mask[torch.cat(row_idx).to(scores.device), torch.cat(cols).to(scores.device)] = 0.0
        if free:
            mask[free] = 0.0
        return scores + mask


"""Trie-constrained beam search that encodes each prompt once, and exact scoring of candidate items.

``beam_search`` prefills every prompt (plus ``<|sid_begin|>``) once, then expands its KV cache over
the beams, one SID level per step: a prompt of P tokens costs P + (levels - 1) * beams token
forwards instead of HF ``generate``'s beams * P. ``prefix_search`` stops after the first ``depth``
levels; ``child_logprobs`` scores the trie children of given prefixes after one prompt; ``score_items``
gives the log-probability of any candidate items' SIDs under the same cache. All take text-only prompts as
token-id lists (``beam_search`` and ``prefix_search`` also as strings) and score as every engine does
(``trie_beam``): the sum of the code tokens' log-probabilities, each a softmax over the SID tokens (inside a
SID nothing else may follow; a model pre-trained with a SID-only head has no calibrated mass elsewhere). The
constant ``<|sid_begin|>`` and the forced ``<|sid_end|>`` are left out, so rankings equal those of the full
sequence score.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .trie import SIDTrie
from .trie_beam import Beam, Children, ranked_items, sid_logprobs

Ranked = list[tuple[str, float]]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` of token-id rows."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def encode(tokenizer, prompts: Sequence[str | Sequence[int]]) -> list[list[int]]:
    """Token ids of each prompt: strings are tokenised as they are (no special tokens added), ids kept."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    return [tok(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p) for p in prompts]


class _Decoder:
    """One batch of prompts: a prefilled cache that rows (beams or candidates) are forked from."""

    def __init__(self, model, prompts: Sequence[Sequence[int]], begin_id: int, pad_id: int, sid_ids: torch.Tensor):
        self.model, self.sid_ids = model, sid_ids
        ids, self.mask = left_pad([list(p) + [begin_id] for p in prompts], pad_id)
        device = model.device
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids.to(device), attention_mask=self.mask.to(device), position_ids=positions.to(device),
                    use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values
        self.first_logprobs = self._logprobs(out.logits[:, -1:])[:, 0]  # (prompts, vocab): level 0

    def _logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-softmax over the SID tokens (``-inf`` elsewhere), on the CPU."""
        return sid_logprobs(logits.float().cpu(), self.sid_ids)

    def fork(self, rows: torch.Tensor) -> None:
        """Keep cache row ``rows[i]`` as new row ``i`` (rows may repeat)."""
        self.cache.batch_select_indices(rows.to(self.model.device))
        self.mask = self.mask[rows]

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = self.mask.sum(-1, keepdim=True) + torch.arange(tokens.shape[1])
        self.mask = torch.cat([self.mask, torch.ones_like(tokens)], dim=1)
        device = self.model.device
        out = self.model(input_ids=tokens.to(device), attention_mask=self.mask.to(device),
                         position_ids=positions.to(device), past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` (rows x n) after each row; log-probs (rows x n x vocab) of what follows each."""
        return self._logprobs(self._forward(tokens))

    def sid_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """``step``'s log-probs over the SID tokens alone (rows x n x SID tokens), on the model's device."""
        logits = self._forward(tokens)
        return logits[..., self.sid_ids.to(logits.device)].float().log_softmax(-1)


def _token_ids(tokenizer, trie: SIDTrie) -> tuple[int, int]:
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    pad = tok.pad_token_id if tok.pad_token_id is not None else trie.first_token
    return trie.first_token, pad


def _beams(model, tokenizer, prompts: Sequence[str | Sequence[int]], trie: SIDTrie, num_beams: int, depth: int,
           exclude: Sequence[set[str]] | None, batch_size: int) -> list[list[Beam]]:
    prompts = encode(tokenizer, prompts)
    if exclude is not None and len(exclude) != len(prompts):
        raise ValueError(f"exclude has {len(exclude)} sets for {len(prompts)} prompts")
    begin, pad = _token_ids(tokenizer, trie)
    results: list[list[Beam]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        dead = trie.dead_nodes(exclude[start:start + batch_size]) if exclude else None
        decoder = _Decoder(model, chunk, begin, pad, trie.token_ids)
        results.extend(_search(decoder, trie, dead, num_beams, depth, begin))
    return results


@torch.no_grad()
def beam_search(model, tokenizer, prompts: Sequence[str | Sequence[int]], trie: SIDTrie, *, num_beams: int = 20,
                k: int = 10, exclude: Sequence[set[str]] | None = None, batch_size: int = 64) -> list[Ranked]:
    """Up to ``k`` distinct ``(item_id, log-prob)`` per prompt (token ids or text), best first: every item in the
    trie and none of ``exclude[i]`` for prompt ``i``."""
    if num_beams < k:
        raise ValueError(f"num_beams={num_beams} must be >= k={k}")
    beams = _beams(model, tokenizer, prompts, trie, num_beams, trie.levels, exclude, batch_size)
    return [ranked_items(trie, user[:k]) for user in beams]


@torch.no_grad()
def prefix_search(model, tokenizer, prompts: Sequence[str | Sequence[int]], trie: SIDTrie, depth: int, *,
                  num_beams: int = 10, batch_size: int = 64) -> list[list[Beam]]:
    """Per prompt, the best ``num_beams`` trie prefixes ``<|sid_begin|> c1..c_depth`` with their log-probs."""
    return _beams(model, tokenizer, prompts, trie, num_beams, depth, None, batch_size)


def _search(decoder: _Decoder, trie: SIDTrie, dead: list[list[int]] | None, num_beams: int, depth: int,
            begin: int) -> list[list[Beam]]:
    """Trie beam search of all users at once: per level, each user's beams x children candidates are scored and
    sorted in one tensor op. The sort is stable over (beam, child token), so ties keep beam then token order
    (as ``expand``); ``-inf`` candidates (pruned or padding) never become beams."""
    n, device = len(decoder.mask), decoder.model.device
    table = trie.table(device)
    users = torch.arange(n, device=device).unsqueeze(1)
    node = torch.full((n, 1), trie.node_of[(begin,)], device=device)
    score = torch.zeros((n, 1), device=device)
    codes = torch.zeros((n, 1, 0), dtype=torch.long, device=device)
    parent, width = torch.zeros_like(node), 1  # row users * width + parent continues beam (user, b)
    banned = None
    if dead is not None and any(dead):  # sorted keys user * nodes + node of the pruned nodes
        banned = torch.tensor(sorted(u * len(table.count) + v for u, vs in enumerate(dead) for v in vs),
                              device=device)
    logprobs = decoder.first_logprobs[:, trie.token_ids].unsqueeze(1).to(device)  # (users, beams, SID tokens)
    for level in range(depth):
        if level:
            decoder.fork((users * width + parent).flatten())
            logprobs = decoder.sid_step(codes[:, :, -1].reshape(-1, 1)).view(n, num_beams, -1)
        width, k = node.shape[1], table.width[level + 1]
        slot = torch.arange(k, device=device)
        edge = table.first[node].unsqueeze(-1) + slot  # (users, beams, k)
        valid = (slot < table.degree[node].unsqueeze(-1)) & (score > float("-inf")).unsqueeze(-1)
        edge = edge.where(valid, 0)
        if banned is not None:
            valid &= ~torch.isin(users.unsqueeze(-1) * len(table.count) + table.child[edge], banned)
        cand = (score.unsqueeze(-1) + logprobs.gather(2, table.column[edge])).masked_fill(~valid, float("-inf"))
        cand = cand.view(n, -1)
        if cand.shape[1] < num_beams:
            cand = torch.cat([cand, cand.new_full((n, num_beams - cand.shape[1]), float("-inf"))], 1)
        score, order = cand.sort(dim=-1, descending=True, stable=True)
        score, order = score[:, :num_beams], order[:, :num_beams].clamp(max=width * k - 1)
        parent, edge = order // k, edge.view(n, -1).gather(1, order)
        node = table.child[edge]
        codes = torch.cat([codes.gather(1, parent.unsqueeze(-1).expand(-1, -1, level)),
                           table.token[edge].unsqueeze(-1)], -1)
    beams = []
    for user_codes, user_scores in zip(codes.tolist(), score.tolist()):
        beams.append([((begin, *c), s) for c, s in zip(user_codes, user_scores) if s > float("-inf")])
    return beams


@torch.no_grad()
def child_logprobs(model, tokenizer, ids: Sequence[int], prefixes: Sequence[Sequence[int]], trie: SIDTrie,
                   banned: set[str] = frozenset()) -> list[Children]:
    """Per prefix (``<|sid_begin|>`` codes..., all of one length), its trie children (minus ``banned`` items)
    after ``ids + prefix`` with their log-probs: one prefill of ``ids``, one step over the prefixes."""
    if not prefixes:
        return []
    begin, pad = _token_ids(tokenizer, trie)
    decoder = _Decoder(model, [ids], begin, pad, trie.token_ids)
    rows = torch.zeros(len(prefixes), dtype=torch.long)
    if len(prefixes[0]) > 1:
        decoder.fork(rows)
        logprobs = decoder.step(torch.tensor([list(p[1:]) for p in prefixes]))[:, -1]
    else:
        logprobs = decoder.first_logprobs[rows]
    counts = trie.banned_counts(banned)
    return [(a, row[a]) for a, row in zip((trie.allowed(p, counts) for p in prefixes), logprobs)]


@torch.no_grad()
def score_items(model, tokenizer, prompts: Sequence[Sequence[int]], candidates: Sequence[Sequence[str]],
                trie: SIDTrie, batch_size: int = 64) -> list[list[float]]:
    """Log-probability of each candidate item's SID codes after each prompt (teacher forcing, one cache per prompt)."""
    begin, pad = _token_ids(tokenizer, trie)
    out: list[list[float]] = []
    for start in range(0, len(prompts), batch_size):
        chunk, cands = prompts[start:start + batch_size], candidates[start:start + batch_size]
        decoder = _Decoder(model, chunk, begin, pad, trie.token_ids)
        codes = [[trie.tokens_of[item][1:-1] for item in row] for row in cands]
        rows = torch.tensor([u for u, row in enumerate(codes) for _ in row], dtype=torch.long)
        flat = torch.tensor([c for row in codes for c in row], dtype=torch.long)  # (rows, levels)
        if not len(flat):
            out.extend([] for _ in chunk)
            continue
        first = decoder.first_logprobs[rows].gather(1, flat[:, :1])
        decoder.fork(rows)
        later = decoder.step(flat[:, :-1]).gather(2, flat[:, 1:].unsqueeze(-1)).squeeze(-1)
        total = (first.squeeze(1) + later.sum(1)).tolist()
        it = iter(total)
        out.extend([next(it) for _ in row] for row in codes)
    return out

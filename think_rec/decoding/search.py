"""Trie-constrained beam search that encodes each prompt once, and exact scoring of candidate items.

``beam_search`` prefills every prompt (plus ``<|sid_begin|>``) once, then searches all prompts of a batch at once,
one SID level per step: every beam of a prompt is fed in the prompt's own cache row (``_Decoder.tree_step``: a 4D
attention mask lets each beam token see the prompt, its ancestors and itself), so the prompt's cache is never copied
per beam; the trie's children and the banned items are tensors (``SIDTrie.table``) and each level is one stable
sort over (prompts, beams x children). ``prefix_search`` stops after the first ``depth`` levels; ``child_logprobs``
scores the trie children of given prefixes after one prompt; ``score_items`` gives the log-probability of any
candidate items' SIDs the same way; ``search_and_score`` does both over one prefill. All take text-only prompts as
token-id lists (``beam_search`` and ``prefix_search`` also as strings) and score as every engine does
(``trie_beam``): the sum of the code tokens' log-probabilities, each a softmax over the SID tokens (inside a
SID nothing else may follow; a model pre-trained with a SID-only head has no calibrated mass elsewhere). The
constant ``<|sid_begin|>`` and the forced ``<|sid_end|>`` are left out, so rankings equal those of the full
sequence score. Every forward runs the decoder body and projects its hidden states onto the SID rows of the
output embedding only (and the item rows at the prefill's last position), never the whole vocabulary of text,
SID and item tokens; models whose logits are not such a plain linear head run the full forward instead.
"""
from __future__ import annotations

import sys
from typing import Callable, Iterator, Sequence

import torch

from .trie import SIDTrie
from .trie_beam import Beam, Children, ranked_items

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


# model types whose logits are exactly ``lm_head(decoder body's last hidden state)``: no soft-capping or scaling
SLICEABLE = frozenset({"qwen3_vl", "qwen2_5_vl", "qwen2_vl", "qwen3", "qwen2", "llama", "mistral"})


def _body_and_head(model) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """The decoder body (``model.model``) and plain ``nn.Linear`` output projection of a ``SLICEABLE`` model (a
    LoRA ``PeftModel``: of its base, whose layers carry the adapters), so that logits over some rows are
    ``hidden @ W[rows].T (+ b[rows])``; None (run the full forward) for anything else, e.g. a head that peft
    wraps (trainable token rows), prompt learning's virtual tokens, or a forward patched or hooked on the model."""
    peft = sys.modules.get("peft")  # a PeftModel means peft is imported
    if peft is not None and isinstance(model, peft.PeftModel):
        if model.active_peft_config.is_prompt_learning:
            return None
        model = model.get_base_model()
    config = getattr(model, "config", None)
    body, head = getattr(model, "model", None), getattr(model, "get_output_embeddings", lambda: None)()
    if getattr(config, "model_type", None) not in SLICEABLE or body is None or type(head) is not torch.nn.Linear:
        return None
    if "forward" in vars(model) or model._forward_hooks or model._forward_pre_hooks:  # a patched or hooked forward
        return None
    return body, head


class _Decoder:
    """One batch of prompts: a prefilled cache that rows (beams or candidates) are forked from. Each forward
    projects the decoder body's hidden states onto the SID rows of the output embedding only (and, at the
    prefill's last position, the item rows): the full vocabulary (text, SID and item tokens) is never scored,
    unless the model's logits are not a plain linear head (``_body_and_head``)."""

    def __init__(self, model, prompts: Sequence[Sequence[int]], begin_id: int, pad_id: int, sid_ids: torch.Tensor,
                 item_ids: torch.Tensor | None = None):
        self.model, self.sid_ids = model, sid_ids
        ids, self.mask = left_pad([list(p) + [begin_id] for p in prompts], pad_id)
        device = model.device
        self.rows = [sid_ids.to(device)] + ([] if item_ids is None else [item_ids.to(device)])
        found = _body_and_head(model)
        self.body, self.heads, self.vocab = None, [], None
        if found is not None:  # the rows' weights, sliced once per decoder (the model may train between calls)
            self.body, head = found
            self.vocab = head.weight.shape[0]
            self.heads = [(head.weight[r], None if head.bias is None else head.bias[r]) for r in self.rows]
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        sid, *item = self._forward(dict(input_ids=ids.to(device), attention_mask=self.mask.to(device),
                                        position_ids=positions.to(device)), len(self.rows), last=True)
        self.first_logprobs = self._logprobs(sid)[:, 0]  # (prompts, vocab): level 0
        self.item_logprobs = item[0][:, -1].float().log_softmax(-1).cpu() if item else None  # (prompts, items)

    def _forward(self, inputs: dict, heads: int = 1, last: bool = False) -> list[torch.Tensor]:
        """Run ``inputs`` on the cache (kept updated); logits over the SID tokens (``heads`` 2: and over the item
        tokens) at every fed position (``last``: only the last one), on the model's device."""
        if self.body is None:
            out = self.model(**inputs, use_cache=True, logits_to_keep=int(last))
            self.cache, self.vocab = out.past_key_values, out.logits.shape[-1]
            return [out.logits[..., r] for r in self.rows[:heads]]
        out = self.body(**inputs, use_cache=True)
        self.cache, hidden = out.past_key_values, out.last_hidden_state
        hidden = hidden[:, -1:] if last else hidden
        return [torch.nn.functional.linear(hidden, w, b) for w, b in self.heads[:heads]]

    def _logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-softmax of the SID tokens' ``logits``, as a (..., vocab) tensor (``-inf`` elsewhere) on the CPU."""
        out = torch.full((*logits.shape[:-1], self.vocab), float("-inf"))
        out[..., self.sid_ids] = logits.float().cpu().log_softmax(-1)
        return out

    def fork(self, rows: torch.Tensor) -> None:
        """Keep cache row ``rows[i]`` as new row ``i`` (rows may repeat)."""
        self.cache.batch_select_indices(rows.to(self.model.device))
        self.mask = self.mask[rows]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` (rows x n) after each row; log-probs (rows x n x vocab) of what follows each."""
        positions = self.mask.sum(-1, keepdim=True) + torch.arange(tokens.shape[1])
        self.mask = torch.cat([self.mask, torch.ones_like(tokens)], dim=1)
        device = self.model.device
        logits, = self._forward(dict(input_ids=tokens.to(device), attention_mask=self.mask.to(device),
                                     position_ids=positions.to(device), past_key_values=self.cache))
        return self._logprobs(logits)

    def tree_step(self, tokens: torch.Tensor, sees: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` (prompts x m) into each prompt's own cache row, without forking it: token ``i`` attends
        to the prompt, to the tokens fed by earlier ``tree_step`` calls and by this one where ``sees[:, i]`` (prompts
        x m x tokens fed after the prompt) and sits ``depth[i]`` places after it. Log-probs over the SID tokens
        (prompts x m x SID tokens) on the model's device. Only ``tree_step`` may follow ``tree_step``."""
        device, dtype = self.model.device, self.model.dtype
        prompt = self.mask.to(device, torch.bool).unsqueeze(1).expand(-1, tokens.shape[1], -1)
        visible = torch.cat([prompt, sees.to(device)], -1).unsqueeze(1)
        mask = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(~visible, torch.finfo(dtype).min)
        positions = self.mask.sum(-1, keepdim=True).to(device) + depth.to(device)
        logits, = self._forward(dict(input_ids=tokens.to(device), attention_mask=mask, position_ids=positions,
                                     past_key_values=self.cache))
        return logits.float().log_softmax(-1)


def _token_ids(tokenizer, trie: SIDTrie) -> tuple[int, int]:
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    pad = tok.pad_token_id if tok.pad_token_id is not None else trie.first_token
    return trie.first_token, pad


def _chunks(model, tokenizer, prompts: Sequence[str | Sequence[int]], trie: SIDTrie, num_beams: int, depth: int,
            exclude: Sequence[set[str]] | None, batch_size: int,
            items: bool = False) -> Iterator[tuple[list[int], _Decoder, list[list[Beam]]]]:
    """Per batch of prompts (batched by length, so little padding), their indices, decoder after the search (with
    the item head's log-probs when ``items``), and beams."""
    prompts = encode(tokenizer, prompts)
    if exclude is not None and len(exclude) != len(prompts):
        raise ValueError(f"exclude has {len(exclude)} sets for {len(prompts)} prompts")
    begin, pad = _token_ids(tokenizer, trie)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(prompts), batch_size):
        index = order[start:start + batch_size]
        dead = trie.dead_nodes([exclude[i] for i in index]) if exclude else None
        decoder = _Decoder(model, [prompts[i] for i in index], begin, pad, trie.token_ids,
                           trie.item_token_ids if items else None)
        yield index, decoder, _search(decoder, trie, dead, num_beams, depth, begin)


def _beams(model, tokenizer, prompts: Sequence[str | Sequence[int]], trie: SIDTrie, num_beams: int, depth: int,
           exclude: Sequence[set[str]] | None, batch_size: int) -> list[list[Beam]]:
    out: list[list[Beam]] = [[] for _ in prompts]
    for index, _, beams in _chunks(model, tokenizer, prompts, trie, num_beams, depth, exclude, batch_size):
        for i, b in zip(index, beams):
            out[i] = b
    return out


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
def search_and_score(model, tokenizer, prompts: Sequence[str | Sequence[int]], trie: SIDTrie,
                     extra: Callable[[int, Ranked, torch.Tensor | None], Sequence[str]], *, num_beams: int,
                     exclude: Sequence[set[str]] | None = None, items: bool = False,
                     batch_size: int = 64) -> tuple[list[Ranked], list[Ranked], list[torch.Tensor | None]]:
    """``beam_search`` (``k = num_beams``) and ``score_items`` of the items ``extra(i, beams of prompt i, item row)``,
    sharing one prefill per prompt: per prompt, its beams' items and the extra items, each with its log-prob, and
    with ``items`` the item head's log-probs (``item_logprobs``; else None)."""
    beams: list[Ranked] = [[] for _ in prompts]
    extras: list[Ranked] = [[] for _ in prompts]
    rows: list[torch.Tensor | None] = [None for _ in prompts]
    for index, decoder, chunk in _chunks(model, tokenizer, prompts, trie, num_beams, trie.levels, exclude,
                                         batch_size, items):
        ranked = [ranked_items(trie, user) for user in chunk]
        heads = list(decoder.item_logprobs) if items else [None] * len(index)
        cands = [list(extra(i, r, h)) for i, r, h in zip(index, ranked, heads)]
        for i, r, row, scores, h in zip(index, ranked, cands, _score(decoder, trie, cands), heads):
            beams[i], extras[i], rows[i] = r, list(zip(row, scores)), h
    return beams, extras, rows


@torch.no_grad()
def prefix_search(model, tokenizer, prompts: Sequence[str | Sequence[int]], trie: SIDTrie, depth: int, *,
                  num_beams: int = 10, exclude: Sequence[set[str]] | None = None,
                  batch_size: int = 64) -> list[list[Beam]]:
    """Per prompt, the best ``num_beams`` trie prefixes ``<|sid_begin|> c1..c_depth`` with their log-probs; no
    prefix whose items are all in ``exclude[i]`` (pruned during the search, as ``beam_search`` prunes)."""
    return _beams(model, tokenizer, prompts, trie, num_beams, depth, exclude, batch_size)


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
    ancestors = torch.zeros((n, num_beams, 0), dtype=torch.long, device=device)  # per beam, its slot per step
    banned = None
    if dead is not None and any(dead):  # sorted keys user * nodes + node of the pruned nodes
        banned = torch.tensor(sorted(u * len(table.count) + v for u, vs in enumerate(dead) for v in vs),
                              device=device)
    logprobs = decoder.first_logprobs[:, trie.token_ids].unsqueeze(1).to(device)  # (users, beams, SID tokens)
    for level in range(depth):
        if level:
            slot = torch.arange(num_beams, device=device)  # beam b sees its ancestors' tokens and its own
            sees = torch.cat([(ancestors.unsqueeze(-1) == slot).flatten(2),
                              (slot.unsqueeze(1) == slot).expand(n, -1, -1)], -1)
            logprobs = decoder.tree_step(codes[:, :, -1], sees, slot.new_full((num_beams,), level - 1))
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
        if level:
            ancestors = torch.cat([ancestors.gather(1, parent.unsqueeze(-1).expand(-1, -1, level - 1)),
                                   parent.unsqueeze(-1)], -1)
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


def _score(decoder: _Decoder, trie: SIDTrie, items: Sequence[Sequence[str]]) -> list[list[float]]:
    """Log-prob of each prompt's ``items``, fed by one ``tree_step`` (all of a prompt's items in its cache row,
    each seeing only its own codes, not what the decoder was fed before)."""
    codes = [[trie.tokens_of[item][1:-1] for item in row] for row in items]
    width = max((len(row) for row in codes), default=0)
    if not width:
        return [[] for _ in codes]
    some = next(iter(trie.tokens_of.values()))[1:-1]  # pads rows short of items
    flat = torch.tensor([row + [row[-1] if row else some] * (width - len(row)) for row in codes])  # (prompts, width, L)
    levels = trie.levels - 1  # fed after <|sid_begin|>: every code but the last
    place = torch.arange(width * levels)
    cand, depth = place // levels, place % levels
    sees = (cand.unsqueeze(1) == cand) & (depth.unsqueeze(1) >= depth)
    earlier = torch.zeros(len(place), decoder.cache.get_seq_length() - decoder.mask.shape[1], dtype=torch.bool)
    later = decoder.tree_step(flat[:, :, :-1].flatten(1), torch.cat([earlier, sees], 1).expand(len(codes), -1, -1),
                              depth)
    later = later.view(len(codes), width, levels, -1).gather(
        3, torch.searchsorted(trie.token_ids, flat[:, :, 1:].contiguous()).unsqueeze(-1).to(later.device)).squeeze(-1)
    total = (decoder.first_logprobs.gather(1, flat[:, :, 0]) + later.sum(-1).cpu()).tolist()
    return [t[:len(row)] for t, row in zip(total, codes)]


@torch.no_grad()
def item_logprobs(model, tokenizer, prompts: Sequence[Sequence[int]], trie: SIDTrie,
                  batch_size: int = 64) -> torch.Tensor:
    """(prompts, items): the item-level head's log-softmax over every catalog item (``trie.items`` order) at the
    ``<|sid_begin|>`` after each prompt."""
    if trie.item_token_ids is None:
        raise ValueError("the model has no item tokens (see think_rec.model.itemic_tokens.add_item_tokens)")
    begin, pad = _token_ids(tokenizer, trie)
    rows = [_Decoder(model, prompts[s:s + batch_size], begin, pad, trie.token_ids, trie.item_token_ids).item_logprobs
            for s in range(0, len(prompts), batch_size)]
    return torch.cat(rows) if rows else torch.zeros(0, len(trie.items))


@torch.no_grad()
def score_items(model, tokenizer, prompts: Sequence[Sequence[int]], candidates: Sequence[Sequence[str]],
                trie: SIDTrie, batch_size: int = 64) -> list[list[float]]:
    """Log-probability of each candidate item's SID codes after each prompt (teacher forcing, one cache per prompt)."""
    begin, pad = _token_ids(tokenizer, trie)
    return [scores for start in range(0, len(prompts), batch_size)
            for scores in _score(_Decoder(model, prompts[start:start + batch_size], begin, pad, trie.token_ids), trie,
                                 candidates[start:start + batch_size])]

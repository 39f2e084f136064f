"""Itemic sequence pre-training data: each user's training sequence as a compact stream of SID tokens.

A stream is ``<|sid_begin|> <s_a_..> ... <|sid_end|>`` per item (then its item token, for a model with
``item_inputs``: read, never supervised), oldest first, with no chat text.
The ``items`` phase's stream is the item tokens alone (``item_stream_ids``: one token per item, item-level memory
trained as SASRec-CE is, several times the epochs of the SID stream in the same time).
Every item after the first of a window is supervised (``completion_mask`` 1 on its SID tokens), so
one pass trains every next-item transition, as SASRec does. Only ``split.train`` is read: the valid
and test items of a user are never in a stream. Sequences longer than ``max_items`` are cut into
windows that overlap by one item, so each transition is supervised exactly once per epoch.
"""
from __future__ import annotations

from typing import Collection, Sequence

import datasets

from think_rec.data.schema import column
from think_rec.data.split import LeaveOneOut
from think_rec.itemic.codebook import SIDCodebook

FEATURES = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                              "completion_mask": datasets.List(datasets.Value("int8"))})


def item_token_ids(codebook: SIDCodebook, tokenizer) -> dict[str, list[int]]:
    """``item_id -> token ids of the item as a history writes it`` (``codebook.history_tokens``: its SID, then its
    item token with ``item_inputs``); the tokenizer must hold those tokens."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    vocab = codebook.vocabulary() + (codebook.item_tokens() if codebook.item_inputs else [])
    id_of = dict(zip(vocab, tok.convert_tokens_to_ids(vocab)))
    if any(i is None or i == tok.unk_token_id for i in id_of.values()):
        raise ValueError("the tokenizer lacks the SID (or item) tokens; run add_sid_tokens (add_item_tokens) first")
    return {item: [id_of[t] for t in codebook.history_tokens(item)] for item in codebook.codes}


def item_stream_ids(codebook: SIDCodebook, tokenizer) -> dict[str, list[int]]:
    """``item_id -> [its item token's id]``: the ``items`` phase writes each item as its item token alone."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    ids = tok.convert_tokens_to_ids(codebook.item_tokens())
    if any(i is None or i == tok.unk_token_id for i in ids):
        raise ValueError("the tokenizer lacks the item tokens; run add_item_tokens first")
    return {item: [ids[n]] for n, item in enumerate(codebook.codes)}


def sid_stream(items: Sequence[str], token_ids: dict[str, list[int]]) -> list[int]:
    """The SID-token stream of ``items`` (the bare-stream prompt of a history)."""
    return [t for item in items for t in token_ids[item]]


def windows(sequence: Sequence[str], max_items: int) -> list[Sequence[str]]:
    """Windows of at most ``max_items`` items overlapping by one: every transition lies in exactly one."""
    if max_items < 2:
        raise ValueError(f"max_items must be >= 2, got {max_items}")
    if len(sequence) <= max_items:
        return [sequence]
    step = max_items - 1
    return [sequence[s:s + max_items] for s in range(0, len(sequence) - 1, step)]


def build_sequence_dataset(split: LeaveOneOut, token_ids: dict[str, list[int]], max_items: int = 50,
                           unsupervised: Collection[int] = ()) -> datasets.Dataset:
    """``input_ids``/``completion_mask`` rows, one per window of each training sequence with 2+ coded items;
    tokens in ``unsupervised`` (the item tokens of ``item_inputs``) are read, never supervised."""
    unsupervised = frozenset(unsupervised)
    rows = []
    for seq in column(split.train, "item_ids"):
        seq = [i for i in seq if i in token_ids]
        if len(seq) < 2:
            continue
        for window in windows(seq, max_items):
            first = len(token_ids[window[0]])
            ids = sid_stream(window, token_ids)
            mask = [0] * first + [int(t not in unsupervised) for t in ids[first:]]
            rows.append({"input_ids": ids, "completion_mask": mask})
    if not rows:
        raise ValueError("no training sequence has two coded items: nothing to pre-train on")
    return datasets.Dataset.from_list(rows, features=FEATURES)

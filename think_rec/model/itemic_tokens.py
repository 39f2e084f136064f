"""Add a codebook's SID tokens to a model + tokenizer; new rows start at the mean of their items' titles."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from think_rec.itemic.codebook import SIDCodebook, code_token
from think_rec.model.tokenizer import THINK_TOKENS

TOKEN_MAP = "sid_tokens.json"


def _tokenizer(processor_or_tokenizer):
    return getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)


def sid_token_ids(tokenizer, codebook: SIDCodebook) -> dict[str, int]:
    """``{token: id}`` for every codebook token; raises if one is missing or not a single id."""
    tok = _tokenizer(tokenizer)
    out = {}
    for t in codebook.vocabulary():
        ids = tok.encode(t, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == tok.unk_token_id:
            raise ValueError(f"SID token {t!r} is not one id in this tokenizer ({ids}); run add_sid_tokens first")
        out[t] = ids[0]
    return out


def _row_sources(codebook: SIDCodebook, title_ids: dict[str, list[int]]) -> dict[str, list[list[int]]]:
    """Each code token -> title token ids of the items using that code at that level (items with a title)."""
    src: dict[str, list[list[int]]] = {t: [] for t in codebook.vocabulary()}
    for item, sid in codebook.codes.items():
        if title_ids.get(item):
            for level, code in enumerate(sid):
                src[code_token(level, code)].append(title_ids[item])
    return src


@torch.no_grad()
def _init_rows(weight: torch.Tensor, old_rows: int, token_ids: dict[str, int],
               sources: dict[str, list[list[int]]], gen: torch.Generator) -> None:
    """Row = mean over items of the mean title-token row; no items -> mean of old rows + small noise."""
    old = weight[:old_rows].float()
    mean, std = old.mean(0), old.std()
    for t, i in token_ids.items():
        if sources[t]:
            row = torch.stack([old[ids].mean(0) for ids in sources[t]]).mean(0)
        else:
            row = mean + 0.1 * std * torch.randn(mean.shape, generator=gen)
        weight[i] = row.to(weight.dtype)


def add_sid_tokens(model, processor_or_tokenizer, codebook: SIDCodebook, item_texts: dict[str, str] | None = None,
                   pad_to_multiple_of: int = 64, *, seed: int = 0, out_dir: str | Path | None = None) -> dict:
    """Add ``codebook.vocabulary()`` as added tokens, grow embeddings to a multiple of ``pad_to_multiple_of``
    and initialise the new rows (input embeddings, and lm_head when untied) from ``item_texts`` (item -> title).

    Tokens are added non-special so ``decode(skip_special_tokens=True)`` keeps them. ``<think>``/``</think>``
    (stage 2) are added after them when the base lacks them (e.g. SmolLM2), their rows at the mean of the old
    rows. Returns (and writes to ``out_dir/sid_tokens.json`` when given)
    ``{"tokens": {token: id}, "first_id", "last_id", "vocab_rows"}``.
    """
    tok = _tokenizer(processor_or_tokenizer)
    vocab = codebook.vocabulary()
    known = tok.get_vocab()
    present = [t for t in vocab if t in known]
    if present:
        raise ValueError(f"tokenizer already has SID tokens (e.g. {present[0]!r}); add_sid_tokens runs once")
    title_ids = {i: tok.encode(text, add_special_tokens=False) for i, text in (item_texts or {}).items()}
    emb = model.get_input_embeddings()
    old_rows = len(tok)  # rows past len(tok) (hub padding) were never trained
    tok.add_tokens(vocab)
    ids = sid_token_ids(tok, codebook)
    first, last = ids[vocab[0]], ids[vocab[-1]]
    if sorted(ids.values()) != list(range(first, last + 1)):
        raise RuntimeError(f"SID token ids are not contiguous ({first}..{last})")
    think = [t for t in THINK_TOKENS if t not in known]
    tok.add_tokens(think)
    rows = -(-max(len(tok), emb.weight.shape[0]) // pad_to_multiple_of) * pad_to_multiple_of
    if rows != emb.weight.shape[0]:
        model.resize_token_embeddings(rows, mean_resizing=False)
    sources = {**_row_sources(codebook, title_ids), **{t: [] for t in think}}
    new = {**ids, **dict(zip(think, tok.convert_tokens_to_ids(think)))}
    gen = torch.Generator().manual_seed(seed)
    in_w = model.get_input_embeddings().weight
    _init_rows(in_w, old_rows, new, sources, gen)
    out_emb = model.get_output_embeddings()
    if out_emb is not None and out_emb.weight.data_ptr() != in_w.data_ptr():
        _init_rows(out_emb.weight, old_rows, new, sources, gen)
    token_map = {"tokens": ids, "first_id": first, "last_id": last, "vocab_rows": rows}
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / TOKEN_MAP).write_text(json.dumps(token_map, indent=0))
    return token_map


@torch.no_grad()
def add_item_tokens(model, processor_or_tokenizer, codebook: SIDCodebook, pad_to_multiple_of: int = 64) -> list[int]:
    """Add one token per item (``codebook.item_tokens()``, after the SID tokens): its ``lm_head`` row scores the
    item as the next one over the whole catalog, an item-level memory beside the SID codes (trained by
    ``finetune/item_head.py``). Each new row (input and output) starts at the mean of its SID tokens' rows.
    Returns the new ids, in item order."""
    tok = _tokenizer(processor_or_tokenizer)
    tokens = codebook.item_tokens()
    if tokens[0] in tok.get_vocab():
        raise ValueError(f"tokenizer already has item tokens (e.g. {tokens[0]!r}); add_item_tokens runs once")
    sid_ids = sid_token_ids(tok, codebook)
    tok.add_tokens(tokens)
    ids = tok.convert_tokens_to_ids(tokens)
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise RuntimeError(f"item token ids are not contiguous ({ids[0]}..{ids[-1]})")
    emb = model.get_input_embeddings()
    rows = -(-max(len(tok), emb.weight.shape[0]) // pad_to_multiple_of) * pad_to_multiple_of
    if rows != emb.weight.shape[0]:
        model.resize_token_embeddings(rows, mean_resizing=False)
    sources = torch.tensor([[sid_ids[t] for t in codebook.tokens(item)[1:-1]] for item in codebook.codes])
    weights = [model.get_input_embeddings().weight]
    out_emb = model.get_output_embeddings()
    if out_emb is not None and out_emb.weight.data_ptr() != weights[0].data_ptr():
        weights.append(out_emb.weight)
    for w in weights:
        w[ids] = w[sources].mean(1).to(w.dtype)
    return ids

"""``recommend``: top-K distinct catalog items per prompt by (constrained) beam search."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import LogitsProcessorList

from ..itemic.codebook import SID_BEGIN, SID_END
from .constraints import SIDConstrainedLogitsProcessor
from .trie import SIDTrie


def _encode(tokenizer_or_processor, prompts) -> dict[str, torch.Tensor]:
    if not isinstance(prompts, (list, tuple)):
        return dict(prompts)  # already a batch encoding (e.g. from a VL processor, left padded)
    tok = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
    side, tok.padding_side = tok.padding_side, "left"
    try:
        return dict(tokenizer_or_processor(text=list(prompts), return_tensors="pt", padding=True))
    finally:
        tok.padding_side = side


@torch.no_grad()
def recommend(model, tokenizer_or_processor, prompts: Sequence[str] | Any, trie: SIDTrie, *, k: int = 10,
              num_beams: int | None = None, exclude: Sequence[set[str]] | None = None,
              max_new_tokens: int | None = None, unconstrained: bool = False,
              **generate_kwargs) -> list[list[tuple[str, float]]]:
    """Up to ``k`` distinct ``(item_id, sequence_score)`` per prompt, best first.

    Constrained beam search only ever yields catalog items (none of ``exclude[i]`` for prompt
    ``i``); ``unconstrained=True`` runs plain beam search and keeps what parses as a catalog item.
    """
    tok = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
    num_beams = num_beams or k
    if num_beams < k:
        raise ValueError(f"num_beams={num_beams} must be >= k={k}")
    if trie.codebook is None and unconstrained:
        raise ValueError("unconstrained decoding parses SIDs: build the trie with SIDTrie.from_codebook")
    inputs = {key: v.to(model.device) if torch.is_tensor(v) else v
              for key, v in _encode(tokenizer_or_processor, prompts).items()}
    n, prompt_len = inputs["input_ids"].shape
    if exclude is not None and len(exclude) != n:
        raise ValueError(f"exclude has {len(exclude)} sets for {n} prompts")
    levels = trie.levels
    end_id = tok.convert_tokens_to_ids(SID_END)
    processors = LogitsProcessorList()
    if not unconstrained:
        processors.append(SIDConstrainedLogitsProcessor(trie, prompt_len, excluded=exclude))
    out = model.generate(**inputs, num_beams=num_beams, num_return_sequences=num_beams, do_sample=False,
                         max_new_tokens=max_new_tokens or levels + 2, eos_token_id=end_id,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else end_id,
                         logits_processor=processors, output_scores=True, return_dict_in_generate=True,
                         **generate_kwargs)
    seqs = out.sequences[:, prompt_len:].tolist()
    scores = out.sequences_scores.tolist()
    results: list[list[tuple[str, float]]] = []
    for i in range(n):
        banned = exclude[i] if exclude is not None else set()
        ranked: list[tuple[str, float]] = []
        seen = set()
        for row in range(i * num_beams, (i + 1) * num_beams):
            if unconstrained:
                text = "".join(t for t in tok.convert_ids_to_tokens(seqs[row]) if t is not None)
                text = text[text.find(SID_BEGIN):] if SID_BEGIN in text else ""
                parsed = trie.codebook.parse(text)
                item = parsed[0] if parsed else None
            else:
                item = trie.item_at(seqs[row][:levels + 2])
            if item is None or item in seen or item in banned or scores[row] == float("-inf"):
                continue
            seen.add(item)
            ranked.append((item, scores[row]))
        results.append(sorted(ranked, key=lambda x: -x[1])[:k])
    return results

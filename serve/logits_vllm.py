"""``SIDTrieLogitsProcessor``: the SID trie as a vLLM v1 logits processor, switched on per request.

The engine core builds it once from ``additional_config["think_rec_sids"]`` (the codebook folder) and
the model's tokenizer. A request opts in with ``SamplingParams(extra_args={"think_rec": {...}})``:

- ``mode="think"``: the rationale under ``RationaleMask`` (free text and citations of the ``citable`` item
  ids, as in HF decoding) until ``</think>``, then only trie continuations; ``draw`` (the fields of
  ``decoding.think.Draw``; absent: greedy) perturbs its logits as HF decoding does, for a request at temperature 0;
- ``mode="sid"``: trie continuations from the first output token, after the SID tokens ``prefix``
  that already end the prompt (one step of the engine's beam search), each set to its log-probability over
  the SID tokens (``trie_beam.sid_logprobs``): under ``logprobs_mode="processed_logits"`` vLLM reports the
  scores of ``think_rec.decoding.search``;
- ``mode="items"``: the item tokens only, each set to its log-probability over the item tokens (a model with
  item tokens: the item-level head's scores at the ``<|sid_begin|>`` that ends the prompt);
- ``banned``: item ids never to complete (pruned exactly, see ``SIDTrie.banned_counts``).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor, RequestLogitsProcessor

from think_rec.decoding.think import Draw, RationaleMask
from think_rec.decoding.trie import SIDTrie
from think_rec.decoding.trie_beam import sid_logprobs
from think_rec.itemic.codebook import SIDCodebook

from .engine import THINK_CLOSE

KEY = "think_rec"


def load_trie(sids_dir: str, tokenizer_path: str) -> tuple[SIDTrie, Any]:
    """The catalog trie in the model's token ids, and the tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    return SIDTrie.from_codebook(SIDCodebook.load(sids_dir), tok), tok


class _Request:
    """One request's constraint: see the module docstring."""

    def __init__(self, owner: "SIDTrieLogitsProcessor", mode: str, prefix: list[int], banned: list[str],
                 citable: list[str], draw: dict | None = None):
        if mode not in ("think", "sid", "items"):
            raise ValueError(f"think_rec mode must be 'think', 'sid' or 'items', not {mode!r}")
        if mode == "items" and owner.item_ids is None:
            raise ValueError("think_rec mode 'items': the model has no item tokens")
        self.owner, self.mode, self.prefix = owner, mode, tuple(prefix)
        self.banned: Counter | None = owner.trie.banned_counts(banned) if banned else None
        self.cite = owner.rationale.citable(citable) if mode == "think" else None
        self.draw = Draw(**draw) if draw else None

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        o = self.owner
        if self.mode == "items":
            items = o.item_ids.to(logits.device)
            return torch.full_like(logits, float("-inf")).index_copy(0, items, logits[items].log_softmax(-1))
        if self.mode == "think":
            if o.close_id not in output_ids:
                return o.rationale.apply(output_ids, logits, self.cite, self.draw)
            prefix = tuple(output_ids[len(output_ids) - output_ids[::-1].index(o.close_id):])
        else:
            prefix = self.prefix + tuple(output_ids)
        out = torch.full_like(logits, float("-inf"))
        if o.trie.item_at(prefix) is not None:
            end = o.end_only.to(logits.device)
            out[end] = logits[end]
        else:  # the allowed codes with their log-probs, as every engine scores them (processed_logits mode)
            allowed = o.trie.allowed(prefix, self.banned).to(logits.device)
            out[allowed] = sid_logprobs(logits, o.sid_ids)[allowed]
        return out


class SIDTrieLogitsProcessor(AdapterLogitsProcessor):
    """Per-request SID trie constraint (see the module docstring)."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        super().__init__(vllm_config, device, is_pin_memory)
        sids = (vllm_config.additional_config or {}).get("think_rec_sids")
        if not sids:
            raise ValueError("SIDTrieLogitsProcessor needs additional_config={'think_rec_sids': SIDS_DIR}")
        self.trie, tok = load_trie(sids, vllm_config.model_config.tokenizer)
        self.close_id = tok.convert_tokens_to_ids(THINK_CLOSE)
        self.rationale = RationaleMask(tok, self.trie)  # the same rule as HF decoding
        self.end_only = torch.tensor([tok.eos_token_id])  # what follows a SID in training
        self.sid_ids = self.trie.token_ids.to(device)
        self.item_ids = self.trie.item_token_ids

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: SamplingParams) -> RequestLogitsProcessor | None:
        args = (params.extra_args or {}).get(KEY)
        if args is None:
            return None
        return _Request(self, args.get("mode", "sid"), args.get("prefix", []), args.get("banned", []),
                        args.get("citable", []), args.get("draw"))

"""``think_then_recommend``: write a rationale inside ``<think>…</think>``, then recommend catalog items.

Two phases, one code path for eval and serving:

1. the prompt gets ``<think>`` appended and the model writes the rationale (greedy; with ``num_rationales`` > 1
   the greedy one and sampled ones, each a ``Draw``: greedy decoding of seeded Gumbel-perturbed logits, the same
   text in every engine) under ``RationaleMask``: free text (no SID codes, special tokens or a second
   ``<think>``) and **citations**, ``<|sid_begin|>`` followed by the SID of one of the prompt's history
   items, token by token (the model names an item in its own item vocabulary; ``render_citations`` shows
   the item's title). It stops at ``</think>``; ``max_think_tokens`` is a ceiling, not a cut: the rationale
   is closed at its last sentence end (``finish_rationale``, also the vLLM engine's rule), never mid-word, and
   is empty when no sentence ended (``max_think_tokens=0`` gives an empty think);
2. the served ranking (``ranking.rank``: the trie beam search, fused with the collaborative ``prior`` when one
   is given) continues ``prompt <think>rationale</think>`` (or, with ``condition=False``, ``prompt
   <think></think>``: the ranking without the rationale), so the answer is always a catalog item. What the
   rationale claims then re-ranks the items and is kept to what holds for the first (``claims.ClaimChecker``).

Several rationales per user are merged by **mean probability** (marginalising over rationales): an
item's merged score is ``log(mean_r exp(score_r))`` where ``score_r`` is its beam score under
rationale ``r`` (the log-probability of its SID codes, ``trie_beam``) and an item missing from
rationale ``r``'s beam counts as probability 0 there.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from .prior import CollaborativePrior
from .ranking import rank
from .search import encode, left_pad
from .trie import SIDTrie

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SENTENCE_END = re.compile(r"[.!?][\"')\]]*\Z")
CITATION = re.compile(r"<\|sid_begin\|>(?:<s_[a-z]_\d+>)*(?:<\|sid_end\|>)?")


@dataclass
class ThinkResult:
    """One prompt's rationales (text with citations shown as titles, in sampling order), merged
    ``(item_id, score)``s (best first), per rationale the cited item ids and whether the model itself
    closed it at a sentence end (``closed_by_model``; otherwise decoding cut it back to one)."""

    rationales: list[str]
    items: list[tuple[str, float]]
    cited: list[list[str]] = field(default_factory=list)
    closed_by_model: list[bool] = field(default_factory=list)


def _token_id(tok, token: str) -> int:
    tid = tok.convert_tokens_to_ids(token)
    if tid is None or tid == tok.unk_token_id:
        raise ValueError(f"the tokenizer has no {token!r} token; build the model with think tokens "
                         "(think_rec.model.tokenizer.THINK_TOKENS)")
    return tid


def close_and_pad(tok) -> tuple[int, int]:
    """``</think>``'s id and the pad id (``</think>`` when the tokenizer has no pad)."""
    close_id = _token_id(tok, THINK_CLOSE)
    return close_id, tok.pad_token_id if tok.pad_token_id is not None else close_id


def think_ids(tokenizer_or_processor, prompt: str, rationale: str) -> list[int]:
    """Token ids of ``prompt <think>rationale</think>``: the layout of stage-2 training and of phase 2."""
    tok = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    body = tok(rationale, add_special_tokens=False)["input_ids"] if rationale else []
    return [*ids, _token_id(tok, THINK_OPEN), *body, _token_id(tok, THINK_CLOSE)]


def rationale_banned_ids(tokenizer, trie: SIDTrie) -> list[int]:
    """Tokens a rationale may not hold: SID codes, special (chat/vision) tokens, pads and a second ``<think>``;
    ``</think>`` stays allowed (it ends the rationale)."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    close_id, pad_id = close_and_pad(tok)
    return sorted({*(i for seq in trie.item_of for i in seq), *tok.all_special_ids, _token_id(tok, THINK_OPEN),
                   pad_id} - {close_id})


def merge_scores(per_rationale: Sequence[Sequence[tuple[str, float]]], k: int) -> list[tuple[str, float]]:
    """Mean-probability merge of several ranked lists (see the module docstring); top ``k``."""
    if len(per_rationale) == 1:
        return list(per_rationale[0])[:k]
    total: dict[str, float] = {}
    for ranked in per_rationale:
        for item, score in ranked:
            total[item] = total.get(item, 0.0) + math.exp(score)
    merged = [(item, math.log(p / len(per_rationale))) for item, p in total.items()]
    return sorted(merged, key=lambda x: -x[1])[:k]


class CitationStream:
    """Rationale deltas (as an engine streams them) with citations shown by ``render_citations``; a
    citation still open at the end of a delta is held back until it closes."""

    def __init__(self, titles: Mapping[str, tuple[str, str]]):
        self.titles, self.pending = titles, ""

    def feed(self, delta: str) -> str:
        text, self.pending = self.pending + delta, ""
        start = text.rfind("<|sid_begin|>")
        if start != -1 and "<|sid_end|>" not in text[start:]:
            text, self.pending = text[:start], text[start:]
        return render_citations(text, self.titles)[0]


@dataclass(frozen=True)
class Draw:
    """Rationale ``index`` of a request drawn as an argmax: index 0 is the greedy rationale; index ``i`` > 0 adds
    seeded Gumbel noise to the temperature-scaled logits of the top-p nucleus (``perturb``), which samples from
    them. Greedy decoding of the perturbed logits gives the same draw in every engine (HF, vLLM, Think-Ahead's
    store) for the same logits, so several rationales per request stay reproducible."""

    index: int = 0
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0

    def perturb(self, logits: torch.Tensor, position: int) -> torch.Tensor:
        """``logits`` (one row) at rationale ``position`` as this draw decodes them greedily."""
        if self.index == 0:
            return logits
        scaled = logits.float() / self.temperature
        if self.top_p < 1.0:
            order = scaled.argsort(descending=True)
            mass = scaled[order].softmax(-1).cumsum(-1)
            outside = order[1:][mass[:-1] >= self.top_p]  # past the nucleus (the top token always stays)
            scaled = scaled.index_fill(0, outside, float("-inf"))
        key = ((self.seed * 1_000_003 + self.index) * 1_000_003 + position) % (2 ** 62)
        u = torch.rand(scaled.shape[0], generator=torch.Generator().manual_seed(key), dtype=torch.float64)
        gumbel = -torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-12)))
        return (scaled + gumbel.to(scaled.device, scaled.dtype)).to(logits.dtype)


def draws(num_rationales: int, do_sample: bool, temperature: float = 0.8, top_p: float = 0.95,
          seed: int = 0) -> list[Draw]:
    """The draws of ``num_rationales`` rationales: the greedy one first, then sampled ones (``do_sample``)."""
    _check(num_rationales, do_sample, 1)
    return [Draw(i, temperature, top_p, seed) for i in range(num_rationales)]


class RationaleMask:
    """The token rule of a rationale, shared by HF generation and the vLLM logits processor: free text
    (``rationale_banned_ids`` are out) and citations of the request's citable items (``citable``); a ``Draw``
    other than the greedy one then perturbs what is allowed."""

    def __init__(self, tokenizer, trie: SIDTrie):
        tok = getattr(tokenizer, "tokenizer", tokenizer)
        self.trie, self.begin = trie, trie.first_token
        banned = rationale_banned_ids(tok, trie)
        self.text_banned = torch.tensor(banned, dtype=torch.long)
        self.text_banned_citing = torch.tensor([t for t in banned if t != self.begin], dtype=torch.long)

    def citable(self, item_ids: Sequence[str]) -> SIDTrie | None:
        """The trie of the catalog items among ``item_ids`` (None when there is none: no citation allowed)."""
        seqs = {i: self.trie.tokens_of[i] for i in dict.fromkeys(item_ids) if i in self.trie.tokens_of}
        return SIDTrie(seqs) if seqs else None

    def apply(self, rationale_ids: Sequence[int], logits: torch.Tensor, cite: SIDTrie | None,
              draw: Draw | None = None) -> torch.Tensor:
        """``logits`` (one row) with every token the rule forbids after ``rationale_ids`` at ``-inf``, perturbed by
        ``draw`` (None: as they are, e.g. for a sampler of its own)."""
        ids = list(rationale_ids)
        ruled = None
        if cite is not None and self.begin in ids:
            prefix = tuple(ids[len(ids) - 1 - ids[::-1].index(self.begin):])
            if prefix in cite.node_of and cite.item_at(prefix) is None:  # inside a citation: its continuations
                allowed = cite.allowed(prefix).to(logits.device)
                ruled = torch.full_like(logits, float("-inf")).index_copy(0, allowed, logits[allowed])
        if ruled is None:
            banned = self.text_banned if cite is None else self.text_banned_citing
            ruled = logits.index_fill(0, banned.to(logits.device), float("-inf"))
        return ruled if draw is None else draw.perturb(ruled, len(ids))


def prompt_items(trie: SIDTrie, prompt_ids: Sequence[int]) -> list[str]:
    """The catalog items whose whole SID appears in ``prompt_ids``, in order (what a rationale may cite)."""
    ids, n = list(prompt_ids), trie.levels + 2
    found = (trie.item_at(ids[j:j + n]) for j, t in enumerate(ids) if t == trie.first_token)
    return list(dict.fromkeys(i for i in found if i is not None))


class RationaleLogitsProcessor(LogitsProcessor):
    """``RationaleMask`` for ``model.generate``: row ``b`` generates after ``prompt_width`` tokens, may
    cite ``cites[b]`` and is decoded as ``row_draws[b]`` (None: the logits as ruled)."""

    def __init__(self, mask: RationaleMask, cites: Sequence[SIDTrie | None], prompt_width: int,
                 row_draws: Sequence[Draw | None] | None = None):
        self.mask, self.cites, self.width = mask, list(cites), prompt_width
        self.draws = list(row_draws) if row_draws is not None else [None] * len(self.cites)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for b in range(scores.shape[0]):
            scores[b] = self.mask.apply(input_ids[b, self.width:].tolist(), scores[b], self.cites[b], self.draws[b])
        return scores


def close_at_sentence(tokenizer, ids: Sequence[int], begin: int, end: int) -> list[int]:
    """The longest prefix of rationale ``ids`` that ends a sentence (``.``, ``!`` or ``?``, closing quotes
    allowed) before a new word, a citation or the end; ``[]`` when none does. Citations (``begin`` ..
    ``end``) are never split and their titles never end a sentence."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    ids, best, text_start, inside = list(ids), 0, 0, False
    for j, t in enumerate(ids):
        if t == begin or inside:
            inside = t != end
            text_start = j + 1
            continue
        if not any(c in tok.decode([t]) for c in ".!?\"')]"):
            continue
        nxt = tok.decode([ids[j + 1]]) if j + 1 < len(ids) else " "
        if SENTENCE_END.search(tok.decode(ids[text_start:j + 1])) and (nxt[:1].isspace() or ids[j + 1] == begin):
            best = j + 1
    return ids[:best]


def finish_rationale(tokenizer, generated: Sequence[int], begin: int, end: int) -> tuple[list[int], bool]:
    """What every engine keeps of a generated think: the ids before ``</think>`` (pads dropped) closed at their
    last sentence end (``close_at_sentence``), and whether the model itself closed it there."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    close_id, pad_id = close_and_pad(tok)
    generated = list(generated)
    closed = close_id in generated
    think = generated[:generated.index(close_id)] if closed else [t for t in generated if t != pad_id]
    kept = close_at_sentence(tok, think, begin, end)
    return kept, closed and kept == think and bool(think)


class SentenceStream:
    """A rationale's ids as an engine generates them -> text deltas that are never taken back: text goes out up
    to a sentence end once the next token (a new word or a citation) confirms it, the rest at ``finish``; the
    deltas add up to ``shown``, the ``show_rationale`` text of ``finish_rationale``'s ids."""

    def __init__(self, tokenizer, begin: int, end: int, titles: Mapping[str, tuple[str, str]]):
        self.tok = getattr(tokenizer, "tokenizer", tokenizer)
        self.begin, self.end, self.titles = begin, end, titles
        self.ids: list[int] = []
        self.shown = ""

    def feed(self, ids: Sequence[int]) -> str:
        """Take newly generated ids; return the text now certain to stay (maybe "")."""
        self.ids += ids
        ready = close_at_sentence(self.tok, self.ids, self.begin, self.end)
        return self._show(ready) if len(ready) < len(self.ids) else ""

    def finish(self) -> tuple[list[int], bool, str]:
        """``finish_rationale`` of everything fed, and the text delta still to show."""
        kept, closed = finish_rationale(self.tok, self.ids, self.begin, self.end)
        return kept, closed, self._show(kept)

    def _show(self, ids: list[int]) -> str:
        text = show_rationale(self.tok, ids, self.titles)[0]
        delta, self.shown = text[len(self.shown):], text
        return delta


def show_rationale(tokenizer, ids: Sequence[int], titles: Mapping[str, tuple[str, str]]) -> tuple[str, list[str]]:
    """Kept rationale ``ids`` as one line of text, citations rendered (``render_citations``), and the cited ids."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    text, cited = render_citations(tok.decode(list(ids), skip_special_tokens=False), titles)
    return " ".join(text.split()), cited


def citation_titles(tokenizer, trie: SIDTrie, citations: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``{SID string: (item_id, title shown)}`` for the catalog items of ``citations`` (``{item_id: title}``)."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    return {tok.decode(list(trie.tokens_of[i])): (i, t) for i, t in citations.items() if i in trie.tokens_of}


def sid_citations(tokenizer, trie: SIDTrie, item_ids: Sequence[str]) -> dict[str, str]:
    """``{item_id: its SID string}`` for the catalog items among ``item_ids``: citations left as SIDs (the serving
    engines leave titles to the API)."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    return {i: tok.decode(list(trie.tokens_of[i])) for i in item_ids if i in trie.tokens_of}


def render_citations(text: str, titles: Mapping[str, tuple[str, str]]) -> tuple[str, list[str]]:
    """``text`` with each citation (a SID string) replaced by its item's title; ``titles`` maps SID strings
    to ``(item_id, title)``. Unknown or unfinished citations are dropped. Returns the text and the cited
    item ids, in order (repeats kept once)."""
    cited: list[str] = []

    def title(m: re.Match) -> str:
        item = titles.get(m.group(0))
        if item is None:
            return ""
        cited.append(item[0])
        return item[1]

    return CITATION.sub(title, text), list(dict.fromkeys(cited))


def _sample(model, tok, bases: list[list[int]], mask: RationaleMask, cites: list[SIDTrie | None],
            prompt_draws: list[Draw], max_think_tokens: int) -> list[list[tuple[list[int], bool]]]:
    """Per prompt, one (rationale ids closed at a sentence end, closed by the model) per draw: every draw is a
    row of one greedy ``generate``."""
    close_id, pad_id = close_and_pad(tok)
    n = len(prompt_draws)
    ids, attention = left_pad([b for b in bases for _ in range(n)], pad_id)
    width = ids.shape[1]
    rule = RationaleLogitsProcessor(mask, [c for c in cites for _ in range(n)], width, prompt_draws * len(bases))
    out = model.generate(input_ids=ids.to(model.device), attention_mask=attention.to(model.device),
                         max_new_tokens=max_think_tokens, eos_token_id=close_id, pad_token_id=pad_id,
                         logits_processor=LogitsProcessorList([rule]), num_beams=1, do_sample=False)
    rows = [finish_rationale(tok, row, mask.trie.first_token, mask.trie.end_token) for row in out[:, width:].tolist()]
    return [rows[i * n:(i + 1) * n] for i in range(len(bases))]


def _check(num_rationales: int, do_sample: bool, max_think_tokens: int) -> None:
    if num_rationales < 1:
        raise ValueError(f"num_rationales must be >= 1, got {num_rationales}")
    if num_rationales > 1 and not do_sample:
        raise ValueError("num_rationales > 1 needs do_sample=True (greedy decoding gives one rationale)")
    if max_think_tokens < 0:
        raise ValueError(f"max_think_tokens must be >= 0, got {max_think_tokens}")


@torch.no_grad()
def _rationales(model, tokenizer_or_processor, prompts: Sequence[str], trie: SIDTrie, citable, num_rationales: int,
                do_sample: bool, temperature: float, top_p: float,
                max_think_tokens: int) -> tuple[list[list[int]], list[list[tuple[list[int], bool]]]]:
    """The prompts' token ids + ``<think>``, and per prompt its rationales (see ``_sample``)."""
    tok = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
    _check(num_rationales, do_sample, max_think_tokens)
    if citable is not None and len(citable) != len(prompts):
        raise ValueError(f"citable has {len(citable)} entries for {len(prompts)} prompts")
    bases = [ids + [_token_id(tok, THINK_OPEN)] for ids in encode(tok, prompts)]
    if max_think_tokens == 0:
        return bases, [[([], False)] * num_rationales for _ in bases]
    mask = RationaleMask(tok, trie)
    cites = [mask.citable(list(c)) for c in citable] if citable is not None else [None] * len(bases)
    prompt_draws = draws(num_rationales, do_sample, temperature, top_p)
    return bases, _sample(model, tok, bases, mask, cites, prompt_draws, max_think_tokens)


def generate_rationales(model, tokenizer_or_processor, prompts: Sequence[str], trie: SIDTrie, *,
                        citable: Sequence[Sequence[str]] | None = None, num_rationales: int = 1,
                        do_sample: bool = False, temperature: float = 0.8, top_p: float = 0.95,
                        max_think_tokens: int = 96) -> list[list[list[int]]]:
    """Per prompt, ``num_rationales`` token-id sequences ``prompt <think> rationale </think>``; ``citable``
    gives per prompt the item ids its rationale may cite (default: none)."""
    tok = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
    close_id = _token_id(tok, THINK_CLOSE)
    bases, rows = _rationales(model, tokenizer_or_processor, prompts, trie, citable, num_rationales, do_sample,
                              temperature, top_p, max_think_tokens)
    return [[base + think + [close_id] for think, _ in r] for base, r in zip(bases, rows)]


@torch.no_grad()
def think_then_recommend(model, tokenizer_or_processor, prompts: Sequence[str], trie: SIDTrie, *, k: int = 10,
                         num_beams: int | None = None, num_rationales: int = 1, do_sample: bool = False,
                         temperature: float = 0.8, top_p: float = 0.95, max_think_tokens: int = 96,
                         exclude: Sequence[set[str]] | None = None,
                         citations: Sequence[Mapping[str, str]] | None = None,
                         histories: Sequence[Sequence[str]] | None = None,
                         prior: CollaborativePrior | None = None, condition: bool = True,
                         rationales: Sequence[str] | None = None) -> list[ThinkResult]:
    """Rationale(s) then up to ``k`` distinct catalog items per prompt (text prompts ending in the
    assistant's generation header, e.g. ``served_prompt(...)``). ``citations`` gives per prompt the items its
    rationale may cite, as ``{item_id: title shown}`` (usually the history); ``prior`` (with the prompts'
    ``histories``) re-scores the post-rationale beams as the served ranking does. ``condition=False`` ranks after
    an empty think (the rationale explains; the ranking is the model's without it: ``served.json``
    ``think_ranking: history``). ``rationales`` (one per prompt, citations as SID strings) are used instead of
    generating (e.g. the teacher's rationale for the true target: the oracle bound)."""
    tok = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
    prompts = list(prompts)
    if exclude is not None and len(exclude) != len(prompts):
        raise ValueError(f"exclude has {len(exclude)} sets for {len(prompts)} prompts")
    if prior is not None and histories is None:
        raise ValueError("a prior needs the prompts' histories")
    if rationales is not None:
        if len(rationales) != len(prompts):
            raise ValueError(f"{len(rationales)} rationales for {len(prompts)} prompts")
        bases = [ids + [_token_id(tok, THINK_OPEN)] for ids in encode(tok, prompts)]
        rows = [[(tok(r, add_special_tokens=False)["input_ids"] if r else [], True)] for r in rationales]
    else:
        citable = None if citations is None else [list(c) for c in citations]
        bases, rows = _rationales(model, tokenizer_or_processor, prompts, trie, citable, num_rationales, do_sample,
                                  temperature, top_p, max_think_tokens)
    close_id = _token_id(tok, THINK_CLOSE)
    per_prompt = [r if condition else r[:1] for r in rows]  # after an empty think, one ranking per prompt
    flat = [base + (think if condition else []) + [close_id] for base, r in zip(bases, per_prompt) for think, _ in r]
    owner = [n for n, r in enumerate(per_prompt) for _ in r]
    ranked = rank(model, tok, flat, [list(histories[n]) if histories is not None else [] for n in owner], trie,
                  prior, k=k, num_beams=num_beams or k, banned=None if exclude is None else [exclude[n] for n in owner])
    results, pos = [], 0
    for n, (r, used) in enumerate(zip(rows, per_prompt)):
        titles = {} if citations is None else citation_titles(tok, trie, citations[n])
        shown = [show_rationale(tok, think, titles) for think, _ in r]
        results.append(ThinkResult([text for text, _ in shown], merge_scores(ranked[pos:pos + len(used)], k),
                                   [c for _, c in shown], [closed for _, closed in r]))
        pos += len(used)
    return results

"""Stage-2 data (OneRec-Think §4.2): pruned context -> teacher rationale -> filters -> tokenised SFT rows.

Each training example (history, target) gets a rationale written from its **pruned** context (the
``prune_k`` history items closest to the target); it is kept only if it does not leak the target,
cites the history, and (rejection sampling) the stage-1 model conditioned on it ranks the target
within ``top_n`` under constrained beam search; otherwise the think is empty. The SFT row is the
**full** (capped) history prompt -> ``<think>rationale</think>`` + target SID, with labels on the
rationale tokens, ``</think>`` and the SID tokens only.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import datasets
from tqdm.auto import tqdm

from think_rec.data.schema import RecDataset, column
from think_rec.data.split import LeaveOneOut, sample_users
from think_rec.decoding import SIDTrie
from think_rec.decoding.search import beam_search
from think_rec.decoding.think import think_ids
from think_rec.itemic.codebook import SIDCodebook
from think_rec.prompts import render_recommend_prompt

from .pruned_context import prune_examples
from .rationale_filters import citation_title, filter_rationale, rejection_sample
from .rationales import RationaleRequest, Teacher, ask_teacher

SID_TEXT = re.compile(r"<\|sid_(?:begin|end)\|>|<s_[a-z]_\d+>")
FIELDS = ("user_id", "history", "target", "pruned", "teacher_rationale", "rationale")


def with_sids(examples: datasets.Dataset, codebook: SIDCodebook) -> datasets.Dataset:
    """The (history, target) examples whose target and history items all have SIDs."""
    codes = codebook.codes
    pairs = zip(column(examples, "history"), column(examples, "target"))
    return examples.select([i for i, (h, t) in enumerate(pairs) if t in codes and all(x in codes for x in h)])


def sample_examples(split: LeaveOneOut, codebook: SIDCodebook, num_examples: int | None,
                    seed: int = 0) -> datasets.Dataset:
    """A seeded sample of training (history, target) examples whose items all have SIDs."""
    coded = with_sids(split.train_examples(), codebook)
    if not len(coded):
        raise ValueError("no training example has SIDs for its target and history")
    return sample_users(coded, num_examples, seed)


def recommend_prompts(histories: Sequence[Sequence[str]], items: dict[str, dict], codebook: SIDCodebook,
                      processor: Any) -> list[str]:
    """The stage-1 recommend prompt (text only) for each history."""
    return [render_recommend_prompt(list(h), items, codebook, processor, with_images=False).text for h in histories]


def rank_with_rationales(model, processor, trie: SIDTrie, prompts: Sequence[str], rationales: Sequence[str], *,
                         top_n: int = 10, num_beams: int | None = None, batch_size: int = 16,
                         progress: bool = True) -> list[list[str]]:
    """Trie beam search on ``prompt <think>rationale</think>``: top ``top_n`` items per example."""
    rows = [think_ids(processor, p, r) for p, r in zip(prompts, rationales)]
    out: list[list[str]] = []
    for start in tqdm(range(0, len(rows), batch_size), desc="rejection beams", disable=not progress or not rows):
        ranked = beam_search(model, processor, rows[start:start + batch_size], trie, num_beams=num_beams or top_n,
                             k=top_n, batch_size=batch_size)
        out += [[item for item, _ in r] for r in ranked]
    return out


def build_rationales(examples: datasets.Dataset, data: RecDataset, codebook: SIDCodebook, sids_dir: str | Path,
                     teacher: Teacher, *, model=None, processor=None, prune_k: int = 10, top_n: int | None = 10,
                     num_beams: int | None = None, batch_size: int = 16, retries: int = 2, retry_backoff: float = 1.0,
                     max_failure_rate: float = 0.05,
                     candidates: Callable[[Sequence[str], str], Sequence[str]] | None = None,
                     progress: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows (``FIELDS``; ``rationale`` is "" when rejected) and filter statistics with ``acceptance_rate``.

    ``candidates(history, target)``: the item ids each request carries as ``candidates`` (the recommender's top
    items for the full history, the target left out). ``top_n=None`` (or no ``model``) skips the rank check and
    keeps the leakage/grounding filters. Teacher requests go through ``ask_teacher`` (``retries``,
    ``max_failure_rate``); examples whose request still failed are left out (``teacher_failures``), neither rows
    nor rejections."""
    items = data.catalog.by_id
    pruned = prune_examples(examples, sids_dir, k=prune_k, progress=progress)
    cols = examples.select_columns(["user_id", "history", "target"]).to_dict()
    requests = [RationaleRequest(u, [items[i] for i in p], items[t],
                                 [items[c] for c in candidates(h, t)] if candidates else [])
                for u, h, t, p in zip(cols["user_id"], cols["history"], cols["target"], pruned)]
    answers = ask_teacher(teacher, requests, retries=retries, backoff=retry_backoff, max_failure_rate=max_failure_rate)
    ok = [i for i, a in enumerate(answers) if a is not None]
    requests, pruned = [requests[i] for i in ok], [pruned[i] for i in ok]
    cols = {k: [v[i] for i in ok] for k, v in cols.items()}
    raw = [SID_TEXT.sub("", answers[i]).strip() for i in ok]
    rankings: dict[int, list[str]] = {}
    if top_n and model is not None:
        passing = [i for i, (req, r) in enumerate(zip(requests, raw))
                   if filter_rationale(r, req.target, req.history)[0]]
        trie = SIDTrie.from_codebook(codebook, processor)
        prompts = recommend_prompts([cols["history"][i] for i in passing], items, codebook, processor)
        ranked = rank_with_rationales(model, processor, trie, prompts, [raw[i] for i in passing], top_n=top_n,
                                      num_beams=num_beams, batch_size=batch_size, progress=progress)
        rankings = {id(requests[i]): r for i, r in zip(passing, ranked)}
    rank_fn = (lambda ex, _text: rankings[id(ex)]) if top_n and model is not None else None
    kept, stats = rejection_sample(requests, raw, rank_fn, top_n=top_n or 10, progress=False)
    rows = [{"user_id": u, "history": h, "target": t, "pruned": p, "teacher_rationale": r, "rationale": k}
            for u, h, t, p, r, k in zip(cols["user_id"], cols["history"], cols["target"], pruned, raw, kept)]
    lengths = [len(k.split()) for k in kept if k]
    stats.update(examples=len(rows), teacher_failures=len(answers) - len(ok), rank_check=bool(rank_fn), top_n=top_n,
                 mean_rationale_words=sum(lengths) / len(lengths) if lengths else 0.0)
    return rows, stats


def encode_citations(rationale: str, history: Sequence[dict[str, Any]], codebook: SIDCodebook) -> str:
    """Each history item named by its ``citation_title`` becomes its SID string: stage 2 trains citations as
    item tokens, which decoding lets the model write (``RationaleMask``) and shows as titles."""
    names = {citation_title(h): codebook.sid_string(h["item_id"]) for h in history
             if citation_title(h) and h["item_id"] in codebook.codes}
    if not names or not rationale:
        return rationale
    pattern = re.compile("|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)))
    return pattern.sub(lambda m: names[m.group(0)], rationale)


def save_rows(rows: list[dict[str, Any]], stats: dict[str, Any], out_dir: str | Path) -> None:
    """``rationales.jsonl`` (one example a line) and ``rationale_stats.json`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rationale_stats.json").unlink(missing_ok=True)  # written last: rows without it are never loaded
    with (out / "rationales.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    (out / "rationale_stats.json").write_text(json.dumps(stats, indent=1))


def load_rows(out_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """What ``save_rows`` wrote, or None; a malformed line raises naming file, line and field."""
    out = Path(out_dir)
    path, stats_path = out / "rationales.jsonl", out / "rationale_stats.json"
    if not (path.exists() and stats_path.exists()):
        return None
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e})") from e
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise ValueError(f"{path}:{n}: missing field {missing[0]!r}")
        rows.append(row)
    return rows, json.loads(stats_path.read_text())


def tokenize_rows(rows: Sequence[dict[str, Any]], data: RecDataset, codebook: SIDCodebook, processor: Any,
                  max_length: int | None = None) -> datasets.Dataset:
    """``input_ids``/``labels``: full-history prompt, ``<think>rationale</think>`` (history titles it names as
    the items' SIDs, ``encode_citations``), target SID, ``<|im_end|>``; labels (not -100) exactly on the
    rationale tokens, ``</think>`` and the SID tokens. A row longer than ``max_length`` loses its oldest
    history items until it fits."""
    tok = getattr(processor, "tokenizer", processor)
    items = data.catalog.by_id
    end_id = tok.eos_token_id
    out = {"input_ids": [], "labels": []}
    for row in tqdm(rows, desc="tokenise stage-2", disable=len(rows) < 2000):
        sid = tok.convert_tokens_to_ids(codebook.tokens(row["target"]))
        history = list(row["history"])
        while True:
            (prompt,) = recommend_prompts([history], items, codebook, processor)
            rationale = encode_citations(row["rationale"], [items[i] for i in history], codebook)
            head = think_ids(processor, prompt, rationale)
            if max_length is None or len(head) + len(sid) + 1 <= max_length:
                break
            if len(history) <= 1:
                raise ValueError(f"example for user {row['user_id']!r}: {len(head) + len(sid) + 1} tokens with one "
                                 f"history item, over max_length={max_length}")
            history = history[1:]
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"]) + 1  # + <think>
        out["input_ids"].append(head + sid + [end_id])
        out["labels"].append([-100] * n_prompt + head[n_prompt:] + sid + [-100])
    return datasets.Dataset.from_dict(out)

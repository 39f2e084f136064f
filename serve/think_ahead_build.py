"""The offline Think-Ahead job (``serve.think_ahead``, CLI ``think-rec think-ahead``): fill a store."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from think_rec.decoding.search import prefix_search
from think_rec.decoding.think import THINK_CLOSE, THINK_OPEN
from think_rec.decoding.trie import SIDTrie
from think_rec.finetune.run_state import model_fingerprint
from think_rec.model.artefacts import model_codebook

from .think_ahead_store import FORMAT_VERSION, ThinkAheadStore, Thought, UserState, codebook_fingerprint


def build_store(model: Path, data: Path, sids: Path, out: Path, *, rationales: int = 0, beam: int | None = None,
                max_think_tokens: int = 64, history: str = "full", max_history: int | None = None,
                users: Sequence[str] | None = None, progress: bool = True) -> int:
    """Precompute ``UserState``s into ``out`` (see ``serve.think_ahead``); returns how many were added.

    ``beam`` (prefixes kept per rationale) and ``max_history`` default to the model's ``served.json``, and the
    prefix search bans the history items when ``served.json`` excludes them (as the API bans them: meta
    ``exclude_history``), so the last-level step gives the items of the live engine.

    ``history="full"``: each user's whole sequence (what ``user=`` requests are served with);
    ``"test"``: the leave-one-out test history (all but the last item), for evaluation."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from think_rec.data.schema import RecDataset
    from think_rec.decoding.think import generate_rationales
    from think_rec.model.artefacts import ServedConfig
    from think_rec.model.loading import load_model

    from .conversation import Conversation, Session

    served = ServedConfig.load(model)
    beam = served.num_beams if beam is None else beam
    max_history = served.max_history if max_history is None else max_history
    if rationales < 0 or beam < 1 or max_history < 1:
        raise ValueError(f"need rationales >= 0, beam >= 1, max_history >= 1 (got {rationales}, {beam}, "
                         f"{max_history})")
    if history not in ("full", "test"):
        raise ValueError(f"history must be 'full' or 'test', not {history!r}")
    dataset, codebook = RecDataset.load(data), model_codebook(sids, model)
    tok = AutoTokenizer.from_pretrained(str(model))
    trie = SIDTrie.from_codebook(codebook, tok)
    levels = trie.levels
    store = ThinkAheadStore(out, {"format_version": FORMAT_VERSION, "model": str(Path(model).resolve()),
                                  "model_fingerprint": model_fingerprint(model),
                                  "sids_sha": codebook_fingerprint(sids), "levels": levels,
                                  "rationales": rationales, "beam": beam, "max_history": max_history,
                                  "history": history, "max_think_tokens": max_think_tokens,
                                  "exclude_history": served.exclude_history,
                                  "think_ranking": served.think_ranking})
    try:
        histories = dict(zip(dataset.interactions.users, dataset.interactions.sequences))
        wanted = list(histories) if users is None else list(users)
        unknown = [u for u in wanted if u not in histories]
        if unknown:
            raise ValueError(f"users not in {data}: {unknown[:5]}")
        done = store.users()
        todo = [u for u in wanted if u not in done]
        if not todo:
            return 0
        net, processor = load_model(str(model))
        net.eval()
        conversation = Conversation(dataset, codebook, tok, max_history)
        open_id, close_id = tok.convert_tokens_to_ids([THINK_OPEN, THINK_CLOSE])
        for user in tqdm(todo, desc="think-ahead", unit="user", disable=not progress):
            seq = histories[user] if history == "full" else histories[user][:-1]
            hist = seq[-max_history:]
            prompt = conversation.prompt(Session(user, history=hist))
            if rationales:
                rows = generate_rationales(net, processor, [prompt], trie, citable=[hist], num_rationales=rationales,
                                           do_sample=rationales > 1, max_think_tokens=max_think_tokens)[0]
            else:
                rows = [tok.encode(prompt, add_special_tokens=False)]
            after_empty = rationales and not served.ranks_after_rationale  # "history": one search, after an empty think
            searched = [rows[0][:len(rows[0]) - rows[0][::-1].index(open_id)] + [close_id]] if after_empty else rows
            exclude = [set(hist) if served.exclude_history else set()] * len(searched)
            found = prefix_search(net, tok, searched, trie, levels - 1, num_beams=beam, exclude=exclude)
            thoughts = []
            for ids, prefixes in zip(rows, found * len(rows) if after_empty else found):
                body = ids[len(ids) - ids[::-1].index(open_id):-1] if rationales else []
                text = tok.decode(body, skip_special_tokens=False).strip() if body else ""
                thoughts.append(Thought(text, body, [(list(p), s) for p, s in prefixes]))
            store.put(UserState(user, hist, thoughts))
            store.commit()  # one row a commit: an interrupted build resumes where it stopped
        return len(todo)
    finally:
        store.close()

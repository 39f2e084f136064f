"""Think-then-recommend: every answer is a catalog SID after ``</think>``, also when the think never closes."""
from __future__ import annotations

import random

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from think_rec.decoding import SIDTrie, think_then_recommend
from think_rec.decoding.think import (SENTENCE_END, Draw, RationaleLogitsProcessor, RationaleMask, SentenceStream,
                                      close_at_sentence, finish_rationale, generate_rationales, merge_scores,
                                      show_rationale)
from think_rec.finetune.rationale_filters import complete
from think_rec.model.loading import load_model
from think_rec.model.tokenizer import train_tokenizer
from think_rec.prompts import render_recommend_prompt


@pytest.fixture(scope="module")
def think_setup(aligned_run, synthetic_dataset):
    dirs, codebook, model_dir = aligned_run
    model, processor = load_model(model_dir)
    model.eval()
    trie = SIDTrie.from_codebook(codebook, processor)
    items = {r["item_id"]: r for r in synthetic_dataset.catalog.items.to_list()}
    ids = list(codebook.codes)
    prompts = [render_recommend_prompt(h, items, codebook, processor, with_images=False).text
               for h in (ids[:4], ids[10:12], ids[30:37])]
    return model, processor, trie, prompts, ids


def bias_token(model, token_id: int, value: float, after: int | None = None):
    """Make ``model`` add ``value`` to one token's next-token logit (only right after token ``after``)."""
    return bias_tokens(model, {after: (token_id, value)})


def bias_tokens(model, rules: dict, noise: float = 0.0):
    """``rules``: ``{after: (token, value)}`` adds ``value`` to ``token``'s next-token logit right after token
    ``after`` (``None``: everywhere); ``noise`` replaces the logits by Gaussian noise of that scale first."""
    forward = type(model).forward.__get__(model)

    def biased(*args, **kwargs):
        out = forward(*args, **kwargs)
        logits = out.logits.clone()
        if noise:
            logits[:, -1] = noise * torch.randn_like(logits[:, -1])
        for after, (token_id, value) in rules.items():
            rows = slice(None) if after is None else kwargs["input_ids"][:, -1] == after
            logits[rows, -1, token_id] += value
        return CausalLMOutputWithPast(logits=logits, past_key_values=out.past_key_values)

    model.forward = biased
    return model


def check_items(results, trie, k, exclude=None):
    for n, r in enumerate(results):
        ids = [i for i, _ in r.items]
        assert len(ids) == k and len(set(ids)) == k
        assert all(i in trie.path_of for i in ids)
        if exclude:
            assert not set(ids) & exclude[n]
        assert [s for _, s in r.items] == sorted((s for _, s in r.items), reverse=True)


def test_never_closing_think_is_closed_at_its_last_sentence(think_setup):
    model, processor, trie, prompts, ids = think_setup
    tok = processor.tokenizer
    close, dot = tok.convert_tokens_to_ids("</think>"), tok.convert_tokens_to_ids(".")
    word = next(i for i in range(len(tok)) if tok.decode([i]).startswith(" ") and tok.decode([i]).strip().isalpha())
    bias_tokens(model, {None: (close, float("-inf")), tok.convert_tokens_to_ids("<think>"): (dot, 1e4),
                        dot: (word, 1e4)})
    try:  # the model writes ". word" first, then never closes: the think is cut back to that sentence end
        seqs = generate_rationales(model, processor, prompts, trie, max_think_tokens=6)
        for rows in seqs:
            (s,) = rows
            assert s[-1] == close and s.count(close) == 1
            opened = len(s) - 1 - s[::-1].index(tok.convert_tokens_to_ids("<think>"))
            think = s[opened + 1:-1]
            assert 1 <= len(think) <= 6 and complete(tok.decode(think)), "cut back to the last sentence end"
            assert not set(think) & {t for seq in trie.item_of for t in seq}, "no SID tokens without citations"
        exclude = [set(ids[:3]), set(), {ids[40]}]
        results = think_then_recommend(model, processor, prompts, trie, k=5, max_think_tokens=6, exclude=exclude)
        check_items(results, trie, 5, exclude)
        assert all(len(r.rationales) == 1 and complete(r.rationales[0]) for r in results)
        assert not any(r.closed_by_model[0] for r in results)
    finally:
        del model.forward


def test_rationales_cite_only_history_items_shown_as_titles(think_setup):
    model, processor, trie, prompts, ids = think_setup
    tok = processor.tokenizer
    begin, end, dot, close, open_ = tok.convert_tokens_to_ids(
        ["<|sid_begin|>", "<|sid_end|>", ".", "</think>", "<think>"])
    histories = [ids[:4], ids[10:12], ids[30:37]]
    bias_tokens(model, {open_: (begin, 1e4), end: (dot, 1e4), dot: (close, 1e4)})
    try:  # the model opens a citation at once: the mask lets it finish only as one of its history items
        results = think_then_recommend(model, processor, prompts, trie, k=3, max_think_tokens=12,
                                       citations=[{i: f"Title {i}" for i in h} for h in histories])
        uncited = think_then_recommend(model, processor, prompts, trie, k=3, max_think_tokens=12)
    finally:
        del model.forward
    for r, h in zip(results, histories):
        (cited,) = r.cited
        assert len(cited) == 1 and cited[0] in h and r.rationales == [f"Title {cited[0]}."]
        assert r.closed_by_model == [True]
    assert all(r.cited == [[]] and "sid" not in r.rationales[0] for r in uncited)


@pytest.mark.parametrize("seed", range(4))
def test_close_at_sentence_never_cuts_mid_word(think_setup, seed):
    """Property test on random token sequences (words, punctuation, citations) against a plain oracle, then
    on random logits."""
    model, processor, trie, prompts, ids = think_setup
    tok = processor.tokenizer
    rng = random.Random(seed)
    begin, end, sid_tokens = trie.first_token, trie.end_token, set(trie.token_ids.tolist())
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    words = tok.convert_tokens_to_ids([".", "!", "?", '"', ")", "Ċ"]) + [
        i for t, i in vocab if i not in sid_tokens and t.isprintable()][:300]

    def valid_cut(seq, n):  # seq[:n] ends a sentence, outside a citation, before a new word or the end
        head = seq[:n]
        if not head or head[-1] in sid_tokens or head.count(begin) != head.count(end):
            return False
        text = head[len(head) - head[::-1].index(end):] if end in head else head
        nxt = seq[n] if n < len(seq) else None
        boundary = nxt is None or nxt == begin or tok.decode([nxt])[:1].isspace()
        return bool(SENTENCE_END.search(tok.decode(text))) and boundary

    for _ in range(300):
        seq: list[int] = []
        target = rng.randint(1, 40)
        while len(seq) < target:
            seq += list(trie.tokens_of[rng.choice(ids)]) if rng.random() < 0.1 else [rng.choice(words)]
        kept = close_at_sentence(tok, seq, begin, end)
        best = max((n for n in range(len(seq) + 1) if valid_cut(seq, n)), default=0)
        assert kept == seq[:best], (tok.decode(seq), tok.decode(kept))
    torch.manual_seed(seed)
    bias_tokens(model, {None: (tok.convert_tokens_to_ids("."), 6.0)}, noise=3.0)
    try:
        results = think_then_recommend(model, processor, prompts, trie, k=2, num_rationales=4, do_sample=True,
                                       max_think_tokens=24)
    finally:
        del model.forward
    texts = [t for r in results for t in r.rationales]
    assert all(t == "" or complete(t) for t in texts) and any(texts)


def test_immediate_close_and_empty_think(think_setup):
    model, processor, trie, prompts, _ = think_setup
    close, open_ = processor.tokenizer.convert_tokens_to_ids(["</think>", "<think>"])
    bias_token(model, close, 1e4, after=open_)
    try:
        closed = think_then_recommend(model, processor, prompts, trie, k=4, max_think_tokens=8)
    finally:
        del model.forward
    empty = think_then_recommend(model, processor, prompts, trie, k=4, max_think_tokens=0)
    for a, b in zip(closed, empty):
        assert a.rationales == b.rationales == [""]
        assert [i for i, _ in a.items] == [i for i, _ in b.items]
    check_items(empty, trie, 4)


def test_sampled_rationales_are_merged(think_setup):
    model, processor, trie, prompts, _ = think_setup
    torch.manual_seed(0)
    results = think_then_recommend(model, processor, prompts[:2], trie, k=6, num_rationales=3, do_sample=True,
                                   max_think_tokens=5)
    check_items(results, trie, 6)
    assert all(len(r.rationales) == 3 for r in results)
    greedy = think_then_recommend(model, processor, prompts[:2], trie, k=6, max_think_tokens=5)
    again = think_then_recommend(model, processor, prompts[:2], trie, k=6, num_rationales=3, do_sample=True,
                                 max_think_tokens=5)
    assert [r.rationales[0] for r in results] == [r.rationales[0] for r in greedy]  # the greedy one first
    assert [r.rationales for r in results] == [r.rationales for r in again]  # seeded draws
    with pytest.raises(ValueError, match="do_sample"):
        think_then_recommend(model, processor, prompts, trie, num_rationales=2)


def test_a_draw_samples_the_tempered_nucleus():
    """Greedy decoding of a draw's perturbed logits picks each token with its tempered softmax probability inside
    the top-p nucleus; draw 0 is greedy; the same (draw, position) perturbs the same way."""
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf")])
    draw = Draw(index=3, temperature=0.8, top_p=0.95)
    picks = torch.tensor([int(draw.perturb(logits, pos).argmax()) for pos in range(4000)])
    probs = (logits / 0.8).softmax(-1)
    kept = probs[:3] / probs[:3].sum()  # 0.72 + 0.21 < 0.95: the third token is in the nucleus, the fourth out
    freq = torch.bincount(picks, minlength=5).float() / len(picks)
    assert freq[:3] == pytest.approx(kept.tolist(), abs=0.03) and freq[3:].sum() == 0
    assert torch.equal(draw.perturb(logits, 7), Draw(3, 0.8, 0.95).perturb(logits, 7))
    assert not torch.equal(draw.perturb(logits, 7), Draw(4, 0.8, 0.95).perturb(logits, 7))
    assert torch.equal(Draw(0).perturb(logits, 7), logits)


def test_draws_are_rows_of_one_greedy_generate(think_setup):
    """A draw is reproducible (the same text twice), draw 0 is the greedy rationale, and draws differ from it."""
    model, processor, trie, prompts, _ = think_setup
    tok = processor.tokenizer
    mask = RationaleMask(tok, trie)
    ids = torch.tensor([tok.encode(prompts[0], add_special_tokens=False) + [tok.convert_tokens_to_ids("<think>")]])

    def generate(draws):
        rule = RationaleLogitsProcessor(mask, [None] * len(draws), ids.shape[1], draws)
        out = model.generate(input_ids=ids.repeat(len(draws), 1), max_new_tokens=12, do_sample=False, num_beams=1,
                             logits_processor=[rule], pad_token_id=tok.pad_token_id, eos_token_id=None)
        return out[:, ids.shape[1]:].tolist()

    greedy = generate([None])[0]
    rows = generate([Draw(0), Draw(1), Draw(2), Draw(1)])
    assert rows[0] == greedy and rows[1] == rows[3] and rows[1] != greedy and rows[2] != rows[1]


def test_vllm_and_hf_apply_the_same_draw(think_setup):
    """The vLLM logits processor (``think`` mode with a ``draw``) and HF's perturb the same logits the same way."""
    pytest.importorskip("vllm")
    from types import SimpleNamespace

    from think_rec.serve.logits_vllm import _Request

    _, processor, trie, _, ids = think_setup
    tok = processor.tokenizer
    mask = RationaleMask(tok, trie)
    owner = SimpleNamespace(trie=trie, rationale=mask, close_id=tok.convert_tokens_to_ids("</think>"), item_ids=None)
    draw = Draw(index=2, temperature=0.7, top_p=0.9, seed=5)
    request = _Request(owner, "think", [], [], ids[:3], vars(draw))
    hf = RationaleLogitsProcessor(mask, [mask.citable(ids[:3])], 1, [draw])
    generated = tok.encode("They liked", add_special_tokens=False)
    logits = torch.randn(len(tok))
    expected = hf(torch.tensor([[0, *generated]]), logits.clone().unsqueeze(0))[0]
    assert torch.equal(request(generated, logits.clone()), expected)


def test_merge_scores_is_mean_probability():
    import math

    merged = merge_scores([[("a", math.log(0.6)), ("b", math.log(0.2))], [("b", math.log(0.5))]], k=2)
    assert [i for i, _ in merged] == ["b", "a"]
    assert math.isclose(math.exp(merged[0][1]), 0.35) and math.isclose(math.exp(merged[1][1]), 0.3)


def test_sentence_stream_lets_out_only_sentences_that_stay():
    """The rationale rule of both engines on token ids: ``finish_rationale`` closes at the last sentence end
    (never at "3." of "3.5"), and ``SentenceStream``'s deltas add up to exactly that text, shown."""
    tok = train_tokenizer(["It is big. It costs 3.5 now. And then it is new."] * 4, vocab_size=300)
    tok.add_tokens(["<|sid_begin|>", "<s_a_1>", "<|sid_end|>"])
    begin, end, close = tok.convert_tokens_to_ids(["<|sid_begin|>", "<|sid_end|>", "</think>"])
    titles = {"<|sid_begin|><s_a_1><|sid_end|>": ("lamp", "Lamp")}
    ids = tok.encode('Like "<|sid_begin|><s_a_1><|sid_end|>", it is  big. It costs 3.5 now. And then',
                     add_special_tokens=False)
    kept, closed = finish_rationale(tok, ids, begin, end)
    assert tok.decode(kept) == 'Like "<|sid_begin|><s_a_1><|sid_end|>", it is  big. It costs 3.5 now.' and not closed
    assert finish_rationale(tok, [*kept, close, tok.pad_token_id], begin, end) == (kept, True)
    assert finish_rationale(tok, tok.encode("And then", add_special_tokens=False), begin, end) == ([], False)
    assert show_rationale(tok, kept, titles) == ('Like "Lamp", it is big. It costs 3.5 now.', ["lamp"])
    stream, shown = SentenceStream(tok, begin, end, titles), [""]
    for t in ids:
        shown.append(shown[-1] + stream.feed([t]))
    assert stream.finish() == (kept, False, "") and stream.shown == shown[-1]
    assert list(dict.fromkeys(shown)) == ["", 'Like "Lamp", it is big.', 'Like "Lamp", it is big. It costs 3.5 now.']
    closing = SentenceStream(tok, begin, end, {})
    deltas = [closing.feed([t]) for t in [*tok.encode("It is big. It is new.", add_special_tokens=False), close]]
    assert "".join(deltas) == "It is big." and closing.finish()[1:] == (True, " It is new.")

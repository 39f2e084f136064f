"""Think-then-recommend: every answer is a catalog SID after ``</think>``, also when the think never closes."""
from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from think_rec.decoding import SIDTrie, think_then_recommend
from think_rec.decoding.think import generate_rationales, merge_scores
from think_rec.model.loading import load_model
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
    forward = type(model).forward.__get__(model)

    def biased(*args, **kwargs):
        out = forward(*args, **kwargs)
        logits = out.logits.clone()
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


def test_never_closing_think_is_force_closed(think_setup):
    model, processor, trie, prompts, ids = think_setup
    close = processor.tokenizer.convert_tokens_to_ids("</think>")
    bias_token(model, close, float("-inf"))
    try:
        seqs = generate_rationales(model, processor, prompts, trie, max_think_tokens=6)
        for rows in seqs:
            (s,) = rows
            assert s[-1] == close and s.count(close) == 1
            opened = len(s) - 1 - s[::-1].index(processor.tokenizer.convert_tokens_to_ids("<think>"))
            assert len(s) - opened - 2 == 6, "the think must run to the budget, then be closed"
            assert not set(s[opened + 1:-1]) & {t for seq in trie.item_of for t in seq}, "no SID tokens in a think"
        exclude = [set(ids[:3]), set(), {ids[40]}]
        results = think_then_recommend(model, processor, prompts, trie, k=5, max_think_tokens=6, exclude=exclude)
        check_items(results, trie, 5, exclude)
        assert all(len(r.rationales) == 1 and r.rationales[0] for r in results)
    finally:
        del model.forward


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
    with pytest.raises(ValueError, match="do_sample"):
        think_then_recommend(model, processor, prompts, trie, num_rationales=2)


def test_merge_scores_is_mean_probability():
    import math

    merged = merge_scores([[("a", math.log(0.6)), ("b", math.log(0.2))], [("b", math.log(0.5))]], k=2)
    assert [i for i, _ in merged] == ["b", "a"]
    assert math.isclose(math.exp(merged[0][1]), 0.35) and math.isclose(math.exp(merged[1][1]), 0.3)

"""The batched trie beam search and tree-attention scoring rank exactly as the per-user reference loop
(``_Decoder.fork``/``step`` per beam, Python sets of trie children, ``expand``) that they replaced."""
from __future__ import annotations

import random

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from think_rec.decoding import SIDTrie
from think_rec.decoding.search import (_Decoder, _token_ids, beam_search, encode, prefix_search, score_items,
                                       search_and_score)
from think_rec.decoding.trie_beam import expand, ranked_items

from test_decoding import synthetic_codebook, tiny_model


def reference_beams(model, tok, prompts, trie, num_beams, depth, exclude=None):
    """The search before batching: one decoder per prompt, each beam a forked cache row, children as sets."""
    begin, pad = _token_ids(tok, trie)
    out = []
    for i, ids in enumerate(encode(tok, prompts)):
        banned = trie.banned_counts(exclude[i]) if exclude else None
        decoder = _Decoder(model, [ids], begin, pad, trie.token_ids)
        beams, parents, logprobs = [((begin,), 0.0)], [], decoder.first_logprobs.unsqueeze(1)
        for level in range(depth):
            if level:
                decoder.fork(torch.tensor(parents))
                logprobs = decoder.step(torch.tensor([[p[-1]] for p, _ in beams]))
            children = [trie.allowed(p, banned) for p, _ in beams]
            kept = expand(beams, [(a, logprobs[b, -1, a]) for b, a in enumerate(children)], num_beams)
            parents, beams = [b for b, _ in kept], [beam for _, beam in kept]
            if not beams:
                break
        out.append(beams)
    return out


def reference_scores(model, tok, prompts, items, trie):
    """Teacher forcing with one forked cache row per item."""
    begin, pad = _token_ids(tok, trie)
    out = []
    for ids, row in zip(prompts, items):
        if not row:
            out.append([])
            continue
        decoder = _Decoder(model, [ids], begin, pad, trie.token_ids)
        codes = torch.tensor([trie.tokens_of[item][1:-1] for item in row])
        decoder.fork(torch.zeros(len(row), dtype=torch.long))
        later = decoder.step(codes[:, :-1]).gather(2, codes[:, 1:].unsqueeze(-1)).squeeze(-1)
        out.append((decoder.first_logprobs[0, codes[:, 0]] + later.sum(1)).tolist())
    return out


def assert_same(got, want):
    assert [[i for i, _ in row] for row in got] == [[i for i, _ in row] for row in want]
    for g, w in zip(got, want):
        assert [s for _, s in g] == pytest.approx([s for _, s in w], abs=1e-5)


@pytest.fixture(scope="module")
def setup():
    codebook = synthetic_codebook(300, 3, 8, seed=3)
    model, tok = tiny_model(codebook, seed=5)
    trie = SIDTrie.from_codebook(codebook, tok)
    rng = random.Random(0)
    words = [w for w in tok.get_vocab() if w.startswith("w")]
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randrange(1, 12))) for _ in range(7)]
    items = sorted(codebook.codes)
    # bans: none, a few items, a whole level-1 subtree (every item under one first code), most of the catalogue
    first = [i for i in items if codebook.codes[i][0] == codebook.codes[items[0]][0]]
    exclude = [set(), set(rng.sample(items, 5)), set(first), set(items[:290]), set(), set(rng.sample(items, 40)),
               set(first) | set(rng.sample(items, 20))]
    return model, tok, trie, prompts, exclude, items


@pytest.mark.parametrize("num_beams,batch_size", [(10, 3), (30, 64), (4, 1)])
def test_beam_search_matches_reference(setup, num_beams, batch_size):
    model, tok, trie, prompts, exclude, _ = setup
    for ex in (None, exclude):
        got = beam_search(model, tok, prompts, trie, num_beams=num_beams, k=num_beams, exclude=ex,
                          batch_size=batch_size)
        want = [ranked_items(trie, b) for b in reference_beams(model, tok, prompts, trie, num_beams, trie.levels, ex)]
        assert_same(got, want)
    assert len(got[3]) == min(10, num_beams)  # 10 items left after the bans


@pytest.mark.parametrize("banned", [False, True])
def test_prefix_search_matches_reference(setup, banned):
    """Also with bans (Think-Ahead stores ban the history): no prefix whose items are all banned."""
    model, tok, trie, prompts, exclude, _ = setup
    ex = exclude if banned else None
    got = prefix_search(model, tok, prompts, trie, 2, num_beams=6, exclude=ex, batch_size=4)
    want = reference_beams(model, tok, prompts, trie, 6, 2, ex)
    assert [[p for p, _ in row] for row in got] == [[p for p, _ in row] for row in want]
    assert [s for row in got for _, s in row] == pytest.approx([s for row in want for _, s in row], abs=1e-5)
    if banned:
        assert got[3] != prefix_search(model, tok, prompts[3:4], trie, 2, num_beams=6)[0]  # 290 of 300 banned
        assert all(trie.count[trie.node_of[tuple(p)]] > trie.banned_counts(e).get(trie.node_of[tuple(p)], 0)
                   for row, e in zip(got, ex) for p, _ in row)


def test_ties_keep_beam_then_token_order(setup):
    """With flat logits every candidate ties: the beams are the first items in trie (token) order."""
    model, tok, trie, prompts, exclude, _ = setup
    flat = type(model).forward.__get__(model)

    class Flat(torch.nn.Module):
        device, dtype = model.device, model.dtype

        def forward(self, **kwargs):
            out = flat(**kwargs)
            return CausalLMOutputWithPast(logits=torch.zeros_like(out.logits), past_key_values=out.past_key_values)

    got = beam_search(Flat(), tok, prompts[:3], trie, num_beams=12, k=12, exclude=exclude[:3], batch_size=2)
    want = reference_beams(Flat(), tok, prompts[:3], trie, 12, trie.levels, exclude[:3])
    want = [ranked_items(trie, b) for b in want]
    assert got == want


def test_scoring_matches_reference(setup):
    model, tok, trie, prompts, exclude, items = setup
    ids = encode(tok, prompts)
    rng = random.Random(1)
    cands = [rng.sample(items, rng.randrange(0, 9)) for _ in ids]
    want = reference_scores(model, tok, ids, cands, trie)
    got = score_items(model, tok, ids, cands, trie, batch_size=3)
    assert [len(r) for r in got] == [len(r) for r in cands]
    assert [s for r in got for s in r] == pytest.approx([s for r in want for s in r], abs=1e-5)
    beams, extra, _ = search_and_score(model, tok, ids, trie, lambda i, b, _: cands[i], num_beams=8,
                                       exclude=exclude, batch_size=3)
    assert_same(beams, beam_search(model, tok, ids, trie, num_beams=8, k=8, exclude=exclude))
    assert [[i for i, _ in r] for r in extra] == cands
    assert [s for r in extra for _, s in r] == pytest.approx([s for r in want for s in r], abs=1e-5)

"""The batched trie beam search and tree-attention scoring rank exactly as the per-user reference loop
(``_Decoder.fork``/``step`` per beam, Python sets of trie children, ``expand``) that they replaced."""
from __future__ import annotations

import copy
import random

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from think_rec.decoding import SIDTrie
from think_rec.decoding.search import (_Decoder, _token_ids, beam_search, encode, left_pad, prefix_search, score_items,
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


def assert_same(got, want, tol=1e-5):
    """The same ranked items with the same scores; two items whose scores differ by float rounding (batched vs
    per-row kernels) may swap places or, at the cut-off, be exchanged, nothing else."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert [s for _, s in g] == pytest.approx([s for _, s in w], abs=tol)
        assert len({i for i, _ in g}) == len(g)
        want_score, cut = dict(w), w[-1][1] if w else 0.0
        for item, s in g:
            assert s == pytest.approx(want_score.get(item, cut), abs=tol), item


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


def _tiny_family(family: str, codebook):
    """A random tiny ``family`` model (``think_rec.model.tiny.tiny_config``) on the word-level tokenizer of
    ``tiny_model``, with one item token per item (``add_item_tokens``)."""
    from think_rec.model.itemic_tokens import add_item_tokens
    from think_rec.model.loading import auto_model_class
    from think_rec.model.tiny import tiny_config

    model, tok = tiny_model(codebook, seed=7)
    if family != "qwen2":
        tok.add_tokens(["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"], special_tokens=True)
        config = tiny_config(family, tok, layers=1)
        torch.manual_seed(7)
        model = auto_model_class(config).from_config(config, dtype=torch.float32).eval()
    add_item_tokens(model, tok, codebook)
    return model, tok


def _full_forward(monkeypatch):
    """Make ``_Decoder`` run the full forward and slice the vocabulary's logits (the computation before the
    projection onto the SID rows)."""
    from think_rec.decoding import search

    monkeypatch.setattr(search, "_body_and_head", lambda model: None)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "qwen3_vl"])
def test_sid_row_projection_matches_full_vocabulary(family, monkeypatch):
    """Projecting the hidden states onto the SID (and item) rows only gives the full forward's log-probs: the
    same beams, scores and item-head rows on text-only and Qwen-VL models with item tokens."""
    codebook = synthetic_codebook(60, 3, 6, seed=4)
    model, tok = _tiny_family(family, codebook)
    trie = SIDTrie.from_codebook(codebook, tok)
    assert trie.item_token_ids is not None
    rng = random.Random(2)
    words = [w for w in tok.get_vocab() if w.startswith("w")]
    ids = encode(tok, [" ".join(rng.choice(words) for _ in range(rng.randrange(1, 9))) for _ in range(5)])
    begin, pad = _token_ids(tok, trie)
    x, mask = left_pad([row + [begin] for row in ids], pad)
    with torch.no_grad():
        decoder = _Decoder(model, ids, begin, pad, trie.token_ids, trie.item_token_ids)
        logits = model(input_ids=x, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    sid = trie.token_ids
    assert decoder.body is not None  # the projection, not the fallback
    assert decoder.first_logprobs[:, sid] == pytest.approx(logits[:, -1, sid].log_softmax(-1), abs=1e-5)
    assert decoder.first_logprobs.shape[1] == logits.shape[-1]
    assert (decoder.first_logprobs[:, trie.item_token_ids] == float("-inf")).all()
    assert decoder.item_logprobs == pytest.approx(logits[:, -1, trie.item_token_ids].log_softmax(-1), abs=1e-5)
    cands = [rng.sample(sorted(codebook.codes), 4) for _ in ids]
    fast = search_and_score(model, tok, ids, trie, lambda i, b, _: cands[i], num_beams=8, items=True, batch_size=3)
    _full_forward(monkeypatch)
    assert _Decoder(model, ids[:1], begin, pad, trie.token_ids).body is None
    full = search_and_score(model, tok, ids, trie, lambda i, b, _: cands[i], num_beams=8, items=True, batch_size=3)
    assert_same(fast[0], full[0])
    assert_same(fast[1], full[1])
    assert torch.stack(fast[2]) == pytest.approx(torch.stack(full[2]), abs=1e-5)


def test_sid_row_projection_of_peft_models(setup, monkeypatch):
    """A LoRA ``PeftModel`` is projected through its base (whose layers carry the adapters); one whose output
    embedding peft wraps (trainable SID rows, ``apply_lora``) runs the full forward; both rank as the full forward."""
    from peft import LoraConfig, get_peft_model

    from think_rec.decoding.search import _body_and_head
    from think_rec.model.adapters import apply_lora

    model, tok, trie, prompts, exclude, _ = setup
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora = get_peft_model(copy.deepcopy(model), config).eval()
    tokens = apply_lora(copy.deepcopy(model), trie.token_ids.tolist(), r=2).eval()
    assert _body_and_head(lora) is not None and _body_and_head(tokens) is None
    fast = [beam_search(m, tok, prompts, trie, num_beams=6, k=6, exclude=exclude) for m in (lora, tokens)]
    _full_forward(monkeypatch)
    for m, got in zip((lora, tokens), fast):
        assert_same(got, beam_search(m, tok, prompts, trie, num_beams=6, k=6, exclude=exclude))

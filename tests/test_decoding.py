"""The trie beam search only yields catalog items, honours exclusions, returns distinct items."""
from __future__ import annotations

import random

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from think_rec.decoding import SIDTrie, beam_search
from think_rec.itemic.codebook import SIDCodebook

WORDS = ["<pad>", "<unk>", "<eos>"] + [f"w{i}" for i in range(61)]


def synthetic_codebook(n_items: int, levels: int, codes: int, seed: int = 0) -> SIDCodebook:
    """``n_items`` distinct random SIDs (item ids ``i0``, ``i1``, ...)."""
    rng = random.Random(seed)
    sids: set[tuple[int, ...]] = set()
    while len(sids) < n_items:
        sids.add(tuple(rng.randrange(codes) for _ in range(levels)))
    return SIDCodebook({f"i{n}": sid for n, sid in enumerate(sorted(sids))}, [codes] * levels)


def tiny_model(codebook: SIDCodebook, hidden: int = 64, layers: int = 2, seed: int = 0):
    """A random word-level ``Qwen2ForCausalLM`` holding the codebook's SID tokens (fast to build)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    tok.add_tokens(codebook.vocabulary(), special_tokens=True)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         tie_word_embeddings=True)
    return Qwen2ForCausalLM(config).eval(), tok


def random_logits(model, seed: int):
    """Make ``model``'s forward return fresh random logits (its cache still works); returns ``model``."""
    gen = torch.Generator().manual_seed(seed)
    forward = type(model).forward.__get__(model)
    model.forward_calls = 0

    def noisy(*args, **kwargs):
        out = forward(*args, **kwargs)
        model.forward_calls += 1
        logits = torch.randn(out.logits.shape, generator=gen) * 5
        return CausalLMOutputWithPast(logits=logits, past_key_values=out.past_key_values)

    model.forward = noisy
    return model


@pytest.fixture(scope="module")
def shop():
    codebook = synthetic_codebook(150, 3, 6, seed=1)
    model, tok = tiny_model(codebook)
    return codebook, model, tok, SIDTrie.from_codebook(codebook, tok)


def test_trie_allowed_and_items(shop):
    codebook, _, tok, trie = shop
    begin, end = tok.convert_tokens_to_ids(["<|sid_begin|>", "<|sid_end|>"])
    assert trie.allowed([]).tolist() == [begin]
    seq = tok.convert_tokens_to_ids(codebook.tokens("i7"))
    assert trie.item_at(seq) == "i7" and trie.item_at(seq[:-1]) is None
    assert trie.allowed(seq[:-1]).tolist() == [end]
    first = {codebook.codes[i][0] for i in codebook.codes}
    assert sorted(tok.convert_ids_to_tokens(trie.allowed([begin]).tolist())) == sorted(
        f"<s_a_{c}>" for c in first)
    # ban every item under one first-level code: that code is pruned, the others stay
    code = codebook.codes["i7"][0]
    under = [i for i, s in codebook.codes.items() if s[0] == code]
    pruned = trie.allowed([begin], trie.banned_counts(under)).tolist()
    assert seq[1] not in pruned and len(pruned) == len(first) - 1
    assert trie.allowed([begin], trie.banned_counts(under[:-1])).tolist() == trie.allowed([begin]).tolist()


def test_trie_needs_sid_tokens(shop):
    codebook, _, _, _ = shop
    _, plain = tiny_model(synthetic_codebook(5, 2, 3))
    with pytest.raises(ValueError, match="lacks"):
        SIDTrie.from_codebook(codebook, plain)


@pytest.mark.parametrize("n_items,levels,codes", [(150, 3, 6), (40, 2, 8), (12, 4, 2)])
def test_random_logits_never_leave_catalog(n_items, levels, codes):
    codebook = synthetic_codebook(n_items, levels, codes, seed=n_items)
    base, tok = tiny_model(codebook, hidden=32, layers=1)
    trie = SIDTrie.from_codebook(codebook, tok)
    rng = random.Random(0)
    items = list(codebook.codes)
    for seed in range(6):
        model = random_logits(base, seed)
        prompts = ["w1 w2 w3", "w5", "w9 w9 w9 w9 w10"]
        exclude = [set(rng.sample(items, min(5, n_items // 3))) for _ in prompts]
        k = min(8, n_items - 5)
        out = beam_search(model, tok, prompts, trie, k=k, num_beams=k + 2, exclude=exclude)
        assert len(out) == len(prompts)
        for ranked, banned in zip(out, exclude):
            ids = [i for i, _ in ranked]
            assert len(ids) == k, "beam search should fill k with catalog items"
            assert set(ids) <= set(codebook.codes) and not set(ids) & banned
            assert len(set(ids)) == len(ids)
            scores = [s for _, s in ranked]
            assert scores == sorted(scores, reverse=True)
        assert model.forward_calls == levels, "one prefill, then one step per further SID level"


def test_exclusions_leave_fewer_items_than_k():
    codebook = synthetic_codebook(6, 2, 3, seed=0)
    model, tok = tiny_model(codebook, hidden=32, layers=1)
    trie = SIDTrie.from_codebook(codebook, tok)
    out = beam_search(model, tok, ["w1"], trie, k=4, num_beams=4, exclude=[{"i0", "i1", "i2", "i3"}])
    assert sorted(i for i, _ in out[0]) == ["i4", "i5"]


def test_text_and_token_id_prompts_agree(shop):
    _, model, tok, trie = shop
    texts = ["w1 w2 w3", "w5"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert beam_search(model, tok, texts, trie, k=5) == beam_search(model, tok, ids, trie, k=5)


def test_unconstrained_parses_only_valid_items(shop):
    from think_rec.eval.bench_decode import unconstrained_beam

    codebook, _, tok, _ = shop
    out = unconstrained_beam(random_logits(tiny_model(codebook)[0], 0), tok, ["w1 w2"], codebook, k=5)
    assert all(i in codebook.codes for i in out[0]) and len(set(out[0])) == len(out[0])


def test_decode_bench_on_tiny_preset(tmp_path):
    from think_rec.eval.bench_decode import run

    payload = run(out_dir=tmp_path, n_items=150, requests=4, batch_size=2, reps=1)
    rows = {r["system"]: r["seconds_per_request"] for r in payload["rows"]}
    assert set(rows) == {"constrained", "unconstrained"} and all(v > 0 for v in rows.values())
    assert (tmp_path / "decode.json").exists() and (tmp_path / "decode.png").exists()

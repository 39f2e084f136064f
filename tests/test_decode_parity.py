"""HF (``think_rec.decoding.search``) and vLLM (``serve.engine_vllm``) decoding of the same prompts on the
stage-1 tiny model, both in float32 (vLLM's "auto" would serve this float32 checkpoint in bf16).

Same model, same logits, same scoring (``think_rec.decoding.trie_beam``): each code a log-softmax over the SID
tokens, so both engines return the same top-K items with the same scores; thinking greedily, the same rationale
(one rule: ``finish_rationale``) and the same items after it.
"""
from __future__ import annotations

import asyncio

import pytest
import torch

from think_rec.data.schema import RecDataset
from think_rec.decoding.ranking import rank
from think_rec.decoding.search import beam_search
from think_rec.decoding.think import sid_citations, think_then_recommend
from think_rec.decoding.trie import SIDTrie
from think_rec.model.artefacts import ServedConfig, load_prior
from think_rec.model.loading import load_model
from think_rec.prompts import render_recommend_prompt

pytestmark = pytest.mark.slow
K = 5
THINK_TOKENS = 48


@torch.no_grad()
def sid_score(model, trie: SIDTrie, prompt: list[int], sid: list[int]) -> float:
    """Log-probability of ``sid`` (``<|sid_begin|>`` codes ``<|sid_end|>``) after ``prompt``, each code a
    softmax over the SID tokens, from one plain forward per code."""
    score = 0.0
    for level in range(1, trie.levels + 1):
        logits = model(input_ids=torch.tensor([prompt + sid[:level]])).logits[0, -1].float()
        logprobs = logits[trie.token_ids].log_softmax(-1)
        score += logprobs[trie.token_ids.tolist().index(sid[level])].item()
    return score


@pytest.fixture(scope="module")
def decoded(aligned_run):
    """Three stage-1 prompts decoded (top ``K``, no thinking) by ``decoding.search`` and by the vLLM engine, each
    twice: nothing banned, then its history items banned; then thinking (greedy) by both engines."""
    pytest.importorskip("vllm")
    from think_rec.serve.engine import EngineConfig, run
    from think_rec.serve.engine_vllm import VLLMEngine

    dirs, codebook, model_dir = aligned_run
    data = RecDataset.load(dirs.data)
    model, processor = load_model(model_dir)
    model.eval()
    trie = SIDTrie.from_codebook(codebook, processor)
    histories = [s[-5:-1] for s in data.interactions.sequences[:3]]
    texts = [render_recommend_prompt(h, data.catalog.by_id, codebook, processor, with_images=False).text
             for h in histories]
    prompts = [processor.tokenizer.encode(t, add_special_tokens=False) for t in texts] * 2
    banned = [set() for _ in histories] + [set(h) for h in histories]
    hf = beam_search(model, processor, prompts, trie, num_beams=K, k=K, exclude=banned)
    prior, served_config = load_prior(model_dir), ServedConfig.load(model_dir)
    hf_think = [think_then_recommend(model, processor, [t], trie, k=K, max_think_tokens=THINK_TOKENS,
                                     citations=[sid_citations(processor, trie, h)], num_beams=served_config.num_beams,
                                     histories=[h], prior=prior)[0]
                for t, h in zip(texts, histories)]
    hf_served = rank(model, processor, texts, histories, trie, prior, k=K, num_beams=served_config.num_beams)
    engine = VLLMEngine(EngineConfig(model_dir, dirs.sids, max_model_len=1024, dtype="float32"))

    async def served() -> tuple[list[list[tuple[str, float]]], list[list]]:
        await engine.start()
        try:
            ranked = [await engine.beam_search(ids, K, b) for ids, b in zip(prompts, banned)]
            thought, plain = [], []
            for t, h in zip(texts, histories):
                thought.append([e async for e in engine.stream(t, k=K, banned=set(), think=True,
                                                               max_think_tokens=THINK_TOKENS, history=h)])
                plain.append(await run(engine, t, k=K, history=h))
            return ranked, thought, plain
        finally:
            engine.shutdown()

    sid_ids = {i: processor.tokenizer.encode(codebook.sid_string(i), add_special_tokens=False) for i in codebook.codes}
    ranked, thought, plain = asyncio.run(served())
    return model, trie, prompts, banned, sid_ids, hf, ranked, thought, hf_think, plain, hf_served


def test_vllm_scores_are_hf_sid_logprobs(decoded):
    model, trie, prompts, banned, sid_ids, _, vllm, *_ = decoded
    for prompt, b, served in zip(prompts, banned, vllm):
        assert len({i for i, _ in served}) == K and not {i for i, _ in served} & b
        expected = [sid_score(model, trie, prompt, sid_ids[i]) for i, _ in served]
        assert [s for _, s in served] == pytest.approx(expected, abs=1e-3)


def test_hf_and_vllm_return_the_same_top_k(decoded):
    *_, hf, vllm, _, _, _, _ = decoded
    assert [[i for i, _ in h] for h in hf] == [[i for i, _ in v] for v in vllm]
    for h, v in zip(hf, vllm):
        assert [s for _, s in v] == pytest.approx([s for _, s in h], abs=1e-3)


def test_hf_and_vllm_think_the_same_rationale(decoded):
    """Greedy thinking: the same kept rationale (closed at its last sentence end when the model did not close
    it), streamed as deltas that add up to it, and the same items after it. This stage-1 model ends no sentence,
    so both close it empty and rank after the same ``<think></think>`` (the text rule is tested on token ids in
    ``test_reason_think.py``)."""
    *_, thought, hf_think, _, _ = decoded
    for events, hf in zip(thought, hf_think):
        *deltas, final = events
        assert final.rationale == hf.rationales[0] == "".join(deltas)
        assert [i for i, _ in final.items] == [i for i, _ in hf.items]


def test_vllm_serves_the_served_ranking(decoded):
    """The served ranking (beams of the model's width fused with its prior) on vLLM in float32 equals
    ``decoding.ranking.rank`` on transformers, the function ``bench rec`` scores."""
    *_, plain, hf_served = decoded
    for v, h in zip(plain, hf_served):
        assert [i for i, _ in v.items] == [i for i, _ in h]
        assert [s for _, s in v.items] == pytest.approx([s for _, s in h], abs=1e-3)

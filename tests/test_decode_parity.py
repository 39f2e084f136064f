"""HF (``think_rec.decoding.search``) and vLLM (``serve.engine_vllm``) decoding of the same prompts on the
stage-1 tiny model, no thinking, both in float32 (vLLM's "auto" would serve this float32 checkpoint in bf16).

Same model, same logits, same scoring (``think_rec.decoding.trie_beam``): each code a log-softmax over the SID
tokens, so both engines return the same top-K items with the same scores.
"""
from __future__ import annotations

import asyncio

import pytest
import torch

from think_rec.data.schema import RecDataset
from think_rec.decoding.search import beam_search
from think_rec.decoding.trie import SIDTrie
from think_rec.model.loading import load_model
from think_rec.prompts import render_recommend_prompt

pytestmark = pytest.mark.slow
K = 5


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
    twice: nothing banned, then its history items banned."""
    pytest.importorskip("vllm")
    from think_rec.serve.engine import EngineConfig
    from think_rec.serve.engine_vllm import VLLMEngine

    dirs, codebook, model_dir = aligned_run
    data = RecDataset.load(dirs.data)
    model, processor = load_model(model_dir)
    model.eval()
    trie = SIDTrie.from_codebook(codebook, processor)
    histories = [s[-5:-1] for s in data.interactions.sequences[:3]]
    prompts = [processor.tokenizer.encode(render_recommend_prompt(h, data.catalog.by_id, codebook, processor,
                                                                  with_images=False).text, add_special_tokens=False)
               for h in histories] * 2
    banned = [set() for _ in histories] + [set(h) for h in histories]
    hf = beam_search(model, processor, prompts, trie, num_beams=K, k=K, exclude=banned)
    engine = VLLMEngine(EngineConfig(model_dir, dirs.sids, max_model_len=1024, dtype="float32"))

    async def served() -> list[list[tuple[str, float]]]:
        await engine.start()
        try:
            return [await engine.beam_search(ids, K, b) for ids, b in zip(prompts, banned)]
        finally:
            engine.shutdown()

    sid_ids = {i: processor.tokenizer.encode(codebook.sid_string(i), add_special_tokens=False) for i in codebook.codes}
    return model, trie, prompts, banned, sid_ids, hf, asyncio.run(served())


def test_vllm_scores_are_hf_sid_logprobs(decoded):
    model, trie, prompts, banned, sid_ids, _, vllm = decoded
    for prompt, b, served in zip(prompts, banned, vllm):
        assert len({i for i, _ in served}) == K and not {i for i, _ in served} & b
        expected = [sid_score(model, trie, prompt, sid_ids[i]) for i, _ in served]
        assert [s for _, s in served] == pytest.approx(expected, abs=1e-3)


def test_hf_and_vllm_return_the_same_top_k(decoded):
    *_, hf, vllm = decoded
    assert [[i for i, _ in h] for h in hf] == [[i for i, _ in v] for v in vllm]
    for h, v in zip(hf, vllm):
        assert [s for _, s in v] == pytest.approx([s for _, s in h], abs=1e-3)

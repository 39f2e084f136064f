"""HF (``think_rec.decoding.search``) and vLLM (``serve.engine_vllm``) decoding of the same prompts on the
stage-1 tiny model, no thinking, both in float32 (vLLM's "auto" would serve this float32 checkpoint in bf16).

Same model, same logits: vLLM's item scores equal transformers' log-probabilities with each code renormalised
over its prefix's trie children. ``decoding.search`` instead normalises each code over all SID tokens, so the
two top-K lists agree at the top and differ below it; that test is an expected failure until one
normalisation is chosen for both.
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
def renormalised(model, trie: SIDTrie, prompt: list[int], sid: list[int]) -> float:
    """Log-probability of ``sid`` (``<|sid_begin|>`` codes ``<|sid_end|>``) after ``prompt``, each code a
    softmax over the trie children of its prefix (as vLLM's engine scores it)."""
    score = 0.0
    for level in range(1, trie.levels + 1):
        prefix = sid[:level]
        allowed = trie.allowed(prefix)
        logits = model(input_ids=torch.tensor([prompt + prefix])).logits[0, -1].float()
        logprobs = logits[allowed].log_softmax(-1)
        score += logprobs[allowed.tolist().index(sid[level])].item()
    return score


@pytest.fixture(scope="module")
def decoded(aligned_run):
    """Three stage-1 prompts decoded (top ``K``, no thinking) by ``decoding.search`` and by the vLLM engine."""
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
               for h in histories]
    hf = beam_search(model, processor, prompts, trie, num_beams=K, k=K)
    engine = VLLMEngine(EngineConfig(model_dir, dirs.sids, max_model_len=1024, dtype="float32"))

    async def served() -> list[list[tuple[str, float]]]:
        await engine.start()
        try:
            return [await engine.beam_search(ids, K, set()) for ids in prompts]
        finally:
            engine.shutdown()

    sid_ids = {i: processor.tokenizer.encode(codebook.sid_string(i), add_special_tokens=False) for i in codebook.codes}
    return model, trie, prompts, sid_ids, hf, asyncio.run(served())


def test_vllm_scores_are_hf_logprobs_renormalised_over_trie_children(decoded):
    model, trie, prompts, sid_ids, _, vllm = decoded
    for prompt, served in zip(prompts, vllm):
        assert len({i for i, _ in served}) == K
        expected = [renormalised(model, trie, prompt, sid_ids[i]) for i, _ in served]
        assert [s for _, s in served] == pytest.approx(expected, abs=1e-3)


@pytest.mark.xfail(strict=True, reason="decoding.search normalises each code over all SID tokens, the vLLM engine "
                                       "over the trie children: rankings differ below the top few (issue 12, item 1)")
def test_hf_and_vllm_return_the_same_top_k(decoded):
    *_, hf, vllm = decoded
    assert [[i for i, _ in h] for h in hf] == [[i for i, _ in v] for v in vllm]

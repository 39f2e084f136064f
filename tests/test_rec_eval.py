"""The served ranking (``think_rec.decoding.ranking``), the collaborative prior as a model artefact and its
weight chosen on valid users, and the evaluation rows built on them."""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import shutil

import pytest

from think_rec.data.split import hold_out, leave_one_out
from think_rec.decoding.prior import MARKOV_CONFIGS, PRIOR_FILE, CollaborativePrior, MarkovConfig, MarkovModel
from think_rec.decoding.ranking import Candidates, candidates, fuse, rank, rank_steps
from think_rec.decoding.search import child_logprobs, encode, item_logprobs
from think_rec.eval.rec import ThinkRecScorer
from think_rec.finetune.served import choose_weight, write_served
from think_rec.model.artefacts import SERVED_FILE, RecModel, ServedConfig
from think_rec.prompts import served_prompt


@pytest.fixture(scope="module")
def rec(aligned_run):
    dirs, codebook, model_dir = aligned_run
    return RecModel.load(model_dir, dirs.sids, dirs.data)


@pytest.fixture(scope="module")
def valid(synthetic_dataset):
    split = leave_one_out(synthetic_dataset.interactions, max_history=5)
    return split, MarkovModel(split.train["item_ids"])


def _prompts(rec, histories):
    tok = rec.processor.tokenizer
    return [served_prompt(tok, h, rec.items, rec.codebook, rec.served.max_history) for h in histories]


def _copy_without(model_dir, tmp_path, *names: str):
    """A copy of ``model_dir`` under ``tmp_path`` without the files ``names`` (each must be there)."""
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    for name in names:
        (bare / name).unlink()
    return bare


def test_fuse_weight_zero_is_the_beams_and_the_prior_reorders():
    cands = Candidates(beams=[("a", -1.0), ("b", -2.0)], extra=[("c", -3.0)], prior={"b": 10.0, "c": 100.0})
    assert fuse(cands, 0.0, 3) == [("a", -1.0), ("b", -2.0)]  # the model alone: no prior-only items
    fused = fuse(cands, 1.0, 3)
    assert [i for i, _ in fused] == ["c", "b", "a"]
    assert math.isclose(dict(fused)["c"], -3.0 + math.log1p(100.0))


def test_stage1_writes_the_served_artefact_chosen_on_valid(aligned_run, rec):
    dirs, _, model_dir = aligned_run
    served = json.loads((model_dir / SERVED_FILE).read_text())
    assert served["max_history"] == 5 and served["num_beams"] == 30 and served["exclude_history"] is False
    assert rec.served == ServedConfig.load(model_dir) and rec.prior is not None
    by_weight = {float(w): s for w, s in rec.prior.selection["valid_ndcg@10_by_weight"].items()}
    assert by_weight[rec.prior.weight] == max(by_weight.values()) and rec.prior.selection["valid_users"] == 200
    by_config = rec.prior.selection["valid_ndcg@10_by_markov_config"]
    chosen = MarkovConfig(**rec.prior.selection["markov_config"])
    assert rec.prior.markov.config == chosen and len(by_config) == len(MARKOV_CONFIGS)
    assert by_config[chosen.key] == max(by_config.values())
    split = leave_one_out(rec.dataset.interactions, max_history=5)
    assert rec.prior.markov.transitions == MarkovModel(split.train["item_ids"], chosen).transitions  # train only
    again = CollaborativePrior.load(model_dir)
    assert again.markov.scores(["0", "1"]) == rec.prior.markov.scores(["0", "1"]) and again.weight == rec.prior.weight


def test_a_model_without_prior_loads_at_weight_zero_and_says_so(aligned_run, tmp_path, caplog):
    dirs, _, model_dir = aligned_run
    bare = _copy_without(model_dir, tmp_path, PRIOR_FILE)
    with caplog.at_level(logging.WARNING):
        loaded = RecModel.load(bare, dirs.sids, dirs.data)
    assert loaded.prior is None and "no collaborative prior" in caplog.text
    (bare / PRIOR_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="prior.json: not a think_rec prior"):
        CollaborativePrior.load(bare)


def test_write_served_chooses_without_warning_of_what_it_is_choosing(aligned_run, tmp_path, caplog):
    """Stage 1 ends with ``write_served`` on a model that has neither ``served.json`` nor a prior yet: it writes
    both, and says nothing about their absence (that warning is for models served without them)."""
    dirs, _, model_dir = aligned_run
    bare = _copy_without(model_dir, tmp_path, PRIOR_FILE, SERVED_FILE)
    with caplog.at_level(logging.WARNING):
        write_served(bare, dirs.data, dirs.sids, max_history=5, valid_users=50)
    assert "no collaborative prior" not in caplog.text and f"no {SERVED_FILE}" not in caplog.text
    loaded = RecModel.load(bare, dirs.sids, dirs.data)
    assert loaded.prior is not None and loaded.served.max_history == 5


def test_write_served_with_a_heldout_share_chooses_on_the_held_out_users(aligned_run, rec, tmp_path):
    """``heldout_share``: the weights are chosen on the held-out users' valid items only, with the counts of the
    split stage 1 trained on (their last training item withheld); the saved prior counts every training item."""
    dirs, _, model_dir = aligned_run
    bare = _copy_without(model_dir, tmp_path, PRIOR_FILE, SERVED_FILE)
    write_served(bare, dirs.data, dirs.sids, max_history=5, valid_users=None, heldout_share=0.3, seed=1)
    prior = RecModel.load(bare, dirs.sids, dirs.data).prior
    held = hold_out(leave_one_out(rec.dataset.interactions, max_history=5), 0.3, seed=1)
    assert prior.selection["heldout_users"] == prior.selection["valid_users"] == len(held.heldout) > 0
    full = leave_one_out(rec.dataset.interactions, max_history=5).train["item_ids"]
    assert prior.markov.transitions == MarkovModel(full, prior.markov.config).transitions
    assert prior.markov.transitions != MarkovModel(held.train["item_ids"], prior.markov.config).transitions


def test_an_earlier_phase_model_is_scored_without_warnings_when_asked(
        aligned_run, synthetic_dataset, tmp_path, caplog):
    """``stream_rows`` scores the sequence phase's model, which has no ``served.json`` or prior by design."""
    dirs, codebook, model_dir = aligned_run
    bare = _copy_without(model_dir, tmp_path, PRIOR_FILE, SERVED_FILE)
    with caplog.at_level(logging.WARNING):
        ThinkRecScorer(bare, synthetic_dataset, codebook, prompt="stream", warn=False)
    assert f"no {SERVED_FILE}" not in caplog.text and "no collaborative prior" not in caplog.text
    with caplog.at_level(logging.WARNING):
        ThinkRecScorer(bare, synthetic_dataset, codebook, prompt="stream")
    assert f"no {SERVED_FILE}" in caplog.text and "no collaborative prior" in caplog.text


def test_ranked_items_follow_the_rule_and_respect_bans(rec, valid):
    split, markov = valid
    histories = split.valid["history"][:12]
    prior = CollaborativePrior(markov, weight=1e6)
    banned = [set(h) for h in histories]
    cands = candidates(rec.model, rec.processor, _prompts(rec, histories), histories, rec.trie, prior, num_beams=10,
                       banned=banned)
    for h, c, ban in zip(histories, cands, banned):
        items = [i for i, _ in c.beams + c.extra]
        assert len(items) == len(set(items)) and not set(items) & ban
        assert [s for _, s in c.beams] == sorted((s for _, s in c.beams), reverse=True)
        strong = fuse(c, 1e6, 10)
        top = max((s for i, s in markov.scores(h).items() if i not in ban), default=0.0)
        if top > 0:
            assert math.isclose(markov.scores(h)[strong[0][0]], top)  # the strongest transition leads
    # candidate scores are the model's log-probabilities of the SIDs: the beams' items rescored agree
    ids = encode(rec.processor, _prompts(rec, histories[:1]))
    alone = candidates(rec.model, rec.processor, ids, histories[:1], rec.trie, None, num_beams=10, items=False)[0]
    assert [i for i, _ in alone.beams] and not alone.extra and not alone.items
    # the item head adds its top items; with a dominant item weight its best non-banned item leads
    heads = candidates(rec.model, rec.processor, ids, histories[:1], rec.trie, None, num_beams=10, banned=banned[:1])[0]
    pool = [i for i, _ in heads.beams + heads.extra]
    assert set(heads.items) == set(pool) and len(heads.extra) >= 1
    row = item_logprobs(rec.model, rec.processor, ids, rec.trie)[0]
    best = max((i for i in rec.trie.items if i not in banned[0]), key=lambda i: row[rec.trie.item_index[i]])
    assert fuse(heads, 0.0, 1, item_weight=1e6)[0][0] == best


def test_transformers_and_step_rankings_agree(rec, valid):
    """``rank`` (batched transformers) and ``rank_steps`` (over ``child_logprobs``, as vLLM and Think-Ahead)."""
    split, markov = valid
    histories = split.valid["history"][:4]
    prior = CollaborativePrior(markov, weight=2.0)
    prompts = _prompts(rec, histories)
    batch = rank(rec.model, rec.processor, prompts, histories, rec.trie, prior, k=10, num_beams=12,
                 banned=[set(h) for h in histories])
    for p, h, expected in zip(encode(rec.processor, prompts), histories, batch):
        async def step(prefixes, banned=frozenset()):
            return child_logprobs(rec.model, rec.processor, p, prefixes, rec.trie, banned)

        got = asyncio.run(rank_steps(functools.partial(step, banned=set(h)), rec.trie, h, prior, k=10, num_beams=12,
                                     banned=set(h)))
        assert [i for i, _ in got] == [i for i, _ in expected]
        assert all(math.isclose(a, b, abs_tol=1e-4) for (_, a), (_, b) in zip(got, expected))


def test_prior_weight_is_chosen_on_valid(synthetic_dataset, aligned_run, valid):
    split, markov = valid
    _, codebook, model_dir = aligned_run
    scorer = ThinkRecScorer(model_dir, synthetic_dataset, codebook, prompt="chat", max_history=5, num_beams=10)
    cands = scorer.candidates(split.valid["history"], CollaborativePrior(markov), exclude_history=True)
    weight, by_weight = choose_weight(cands, split.valid["target"], weights=(0.0, 1.0, 4.0))
    assert set(by_weight) == {0.0, 1.0, 4.0} and by_weight[weight] == max(by_weight.values())


def test_unknown_prompt_kind_is_refused(synthetic_dataset, aligned_run):
    _, codebook, model_dir = aligned_run
    with pytest.raises(ValueError, match="prompt must be one of"):
        ThinkRecScorer(model_dir, synthetic_dataset, codebook, prompt="tweet")


def test_rec_model_loads_each_artefact_from_the_run_folders(aligned_run):
    dirs, codebook, model_dir = aligned_run
    rec = RecModel.load(model_dir, dirs.sids, dirs.data)
    assert not rec.model.training and set(rec.trie.tokens_of) == set(rec.codebook.codes) == set(codebook.codes)
    assert rec.items is rec.dataset.catalog.by_id and set(rec.items) == set(rec.dataset.catalog.ids)
    with pytest.raises(ValueError, match="without data"):
        RecModel.load(model_dir, codebook).items

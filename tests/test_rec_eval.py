"""think_rec's evaluation: the prompt kinds, the collaborative prior and its selection on valid."""
from __future__ import annotations

import math

import pytest

from think_rec.data.split import leave_one_out
from think_rec.eval.markov import MarkovModel
from think_rec.eval.rec import ThinkRecScorer, prior_fused_rankings, select_prior_weight
from think_rec.model.artefacts import RecModel


@pytest.fixture(scope="module")
def scorer(synthetic_dataset, aligned_run):
    _, codebook, model_dir = aligned_run
    return ThinkRecScorer(model_dir, synthetic_dataset, codebook, prompt="chat", max_history=5, num_beams=10)


def test_prior_weight_zero_is_the_model_and_a_large_weight_follows_the_transitions(synthetic_dataset, scorer):
    split = leave_one_out(synthetic_dataset.interactions, max_history=5)
    markov = MarkovModel(split.train["item_ids"])
    histories = split.valid["history"][:20]
    fused = prior_fused_rankings(scorer, markov, histories, weights=(0.0, 1e6), k=10, exclude_history=True)
    beams = scorer.beams(histories, exclude_history=True)
    for h, row, own, strong in zip(histories, beams, fused[0.0], fused[1e6]):
        assert not set(own) & set(h) and not set(strong) & set(h)
        # weight 0: the model's own log-probabilities decide (a Markov item may outrank a weaker beam)
        candidates = {i: s for i, s in row}
        extra = [i for i in markov.rank(h, 30, set(h)) if i not in candidates]
        candidates.update(zip(extra, scorer.score([h], [extra])[0]))
        ranked = [candidates[i] for i in own]
        rest = [s for i, s in candidates.items() if i not in own]
        assert all(a >= b - 1e-4 for a, b in zip(ranked, ranked[1:]))
        assert not rest or ranked[-1] >= max(rest) - 1e-4
        scores = markov.scores(h)
        top = max((s for i, s in scores.items() if i not in h), default=0.0)
        if top > 0:
            assert math.isclose(scores[strong[0]], top)  # the strongest transition leads


def test_prior_weight_is_chosen_on_valid(synthetic_dataset, scorer):
    split = leave_one_out(synthetic_dataset.interactions, max_history=5)
    weight, by_weight = select_prior_weight(scorer, MarkovModel(split.train["item_ids"]), split.valid,
                                            weights=(0.0, 1.0, 4.0))
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

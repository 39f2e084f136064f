"""Stage 3 (GRPO with the rollout-beam reward) on the generated shop: exact rewards, catalog-only beams,
weights that move, resume."""
from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch
from trl import TrlParser

from think_rec.data.schema import Interactions, RecDataset
from think_rec.decoding.claims import ClaimChecker
from think_rec.data.split import leave_one_out
from think_rec.decoding.think import THINK_CLOSE, RationaleMask, close_and_pad, finish_rationale
from think_rec.decoding.trie import SIDTrie
from think_rec.finetune.rationale_filters import citation_title
from think_rec.finetune.reason import reason_fingerprint, train_reason
from think_rec.finetune.reason_config import ReasonConfig
from think_rec.finetune.reason_data import save_rows
from think_rec.finetune.rl import (heldout_rewards, rationale_rule_in_rollouts, reward_rollout, rl_dataset,
                                   train_rl)
from think_rec.finetune.rl_config import RLConfig
from think_rec.finetune.rl_rewards import BeamRollout, prefix_match, rank_reward
from think_rec.model.artefacts import SERVED_FILE
from think_rec.model.loading import load_model


def test_rewards_on_hand_made_beams():
    target = (3, 1, 4)
    assert prefix_match([(3, 1, 5), (3, 2, 4), (9, 1, 4)], target) == pytest.approx(2 / 3)
    assert prefix_match([(3, 1, 4)], target) == 1.0
    assert prefix_match([(9, 1, 4)], target) == 0.0 and prefix_match([], target) == 0.0
    assert rank_reward(["a", "b", "c"], "a") == 1.0
    assert rank_reward(["a", "b", "c"], "c") == pytest.approx(1 / math.log2(4))
    assert rank_reward(["a", "b"], "z") == 0.0
    rollout = BeamRollout(tokenizer=None, trie=None, close_id=7)
    _, _, fmt = rollout.reward_functions({}, ["rollout_beam", "rank", "format"])
    assert fmt(["p", "p"], ["", ""], [[1, 2, 7], [1, 2, 3]]) == [0.0, -1.0]
    assert rollout.closed([1, 7, 5]) == [1, 7] and rollout.closed([1, 2]) == [1, 2, 7]
    with pytest.raises(ValueError, match="unknown reward 'pass_fail'"):
        rollout.reward_functions({}, ["pass_fail"])
    with pytest.raises(ValueError, match="needs BeamRollout.checker"):
        rollout.reward_functions({}, ["faithful"])
    with pytest.raises(ValueError, match="unknown reward"):
        RLConfig(output_dir="x", rewards={"ndcg": 1.0})


def test_rl_yaml_parses():
    config = Path(__file__).resolve().parents[1] / "finetune" / "configs" / "rl_tiny.yaml"
    (cfg,) = TrlParser((RLConfig,)).parse_args_and_config(["--config", str(config)])
    assert cfg.rewards == {"rollout_beam": 1.0, "rank": 1.0, "format": 1.0, "faithful": 0.5}
    assert cfg.reward_weights == [1.0, 1.0, 1.0, 0.5] and cfg.prompt_split == "valid"
    assert (cfg.num_generations, cfg.num_beams, cfg.beta, cfg.epsilon) == (16, 32, 0.001, 0.2)
    assert (cfg.eval_examples, cfg.eval_strategy, cfg.eval_on_start) == (32, "steps", True)


@pytest.fixture(scope="module")
def reasoned(aligned_run, tmp_path_factory):
    """A small stage-2 model (template rationales, full training) on the generated shop."""
    dirs, codebook, model_dir = aligned_run
    out = tmp_path_factory.mktemp("rl_stage2")
    final = train_reason(ReasonConfig(output_dir=str(out), model=str(model_dir), data_dir=str(dirs.data),
                                      sids_dir=str(dirs.sids), num_examples=64, max_history=5, rejection_top_n=0,
                                      lora_r=0, per_device_train_batch_size=16, max_steps=20, learning_rate=1e-3,
                                      save_steps=1000, disable_tqdm=True))
    return dirs, codebook, final


def rl_config(reasoned, out, **kw) -> RLConfig:
    dirs, _, stage2 = reasoned
    base = dict(output_dir=str(out), model=str(stage2), data_dir=str(dirs.data), sids_dir=str(dirs.sids),
                max_history=5, num_examples=64, num_beams=8, num_generations=4, per_device_train_batch_size=8,
                max_completion_length=16, lora_r=0, learning_rate=1e-4, save_steps=2, disable_tqdm=True,
                rewards={"rollout_beam": 1.0, "rank": 1.0, "format": 1.0})
    return RLConfig(**{**base, **kw})


def test_grpo_moves_the_policy_logs_and_resumes(reasoned, tmp_path):
    _, codebook, stage2 = reasoned
    heldout_eval = dict(eval_examples=4, eval_strategy="steps", eval_steps=2, eval_on_start=True)
    final = train_rl(rl_config(reasoned, tmp_path, max_steps=2, **heldout_eval))
    log = json.loads((tmp_path / "rl_log.json").read_text())
    assert [r["step"] for r in log] == [1, 2] and (tmp_path / "reward_curve.png").stat().st_size > 0
    heldout = json.loads((tmp_path / "rl_heldout_log.json").read_text())  # held-out prompts at steps 0 and 2
    assert [r["step"] for r in heldout] == [0, 2] and all({"mean_reward", "rank"} <= set(r) for r in heldout), heldout
    assert {"mean_reward", "reward_std", "zero_variance_group_share", "kl", "rationale_length", "rollout_beam",
            "rank", "format"} <= set(log[0])
    before, _ = load_model(stage2)
    after, processor = load_model(final)
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))

    train_rl(rl_config(reasoned, tmp_path, max_steps=3, **heldout_eval))  # resumes from checkpoint-2
    assert [r["step"] for r in json.loads((tmp_path / "rl_log.json").read_text())] == [1, 2, 3]

    # the reward's beams hold catalog items only, num_beams of them
    tok = processor.tokenizer
    trie = SIDTrie.from_codebook(codebook, processor)
    rollout = BeamRollout(tok, trie, tok.convert_tokens_to_ids(THINK_CLOSE), num_beams=8)
    rollout.model = after
    prompts = ["<|im_start|>user\nsomething for my lab<|im_end|>\n<|im_start|>assistant\n<think>"] * 2
    beams = rollout.beams(prompts, [tok("a few words")["input_ids"], []])
    assert all(len(b) == 8 and set(b) <= set(codebook.codes) for b in beams)


def test_valid_prompts_leave_heldout_users_out_and_rewards_read_served_rationales(reasoned, tmp_path):
    dirs, codebook, stage2 = reasoned
    rewards = {"rollout_beam": 1.0, "rank": 1.0, "format": 1.0, "faithful": 0.5}
    config = rl_config(reasoned, tmp_path, prompt_split="valid", eval_examples=4, rewards=rewards)
    data = RecDataset.load(dirs.data)
    model, processor = load_model(stage2)
    pairs = {n: {(tuple(r["history"]), r["target"]) for r in rl_dataset(config, data, codebook, processor, heldout=n)}
             for n in (False, True)}
    split = leave_one_out(data.interactions, max_history=5)
    valid = {(tuple(h), t) for h, t in zip(split.valid["history"], split.valid["target"])}
    assert len(pairs[True]) == 4 and not pairs[True] & pairs[False] and pairs[False] | pairs[True] <= valid
    assert len(pairs[False]) == min(64, len(valid) - 4)
    for item_inputs in (False, True):  # histories written as the model reads them: its served.json's item_inputs
        served = tmp_path / f"item-inputs-{item_inputs}"
        served.mkdir()
        (served / SERVED_FILE).write_text(json.dumps({"item_inputs": item_inputs}))
        reader = copy.copy(config)
        reader.model = str(served)
        prompts = rl_dataset(reader, data, codebook, processor, heldout=True)["prompt"]
        assert all(("<|i_" in p) == item_inputs for p in prompts)

    tok = processor.tokenizer
    trie = SIDTrie.from_codebook(codebook, processor)
    rollout = reward_rollout(config, tok, trie, data)
    held = rl_dataset(config, data, codebook, processor, heldout=True)
    first = heldout_rewards(model, tok, trie, held, rollout, rewards, codebook.codes, 16, progress=False)
    assert first == heldout_rewards(model, tok, trie, held, rollout, rewards, codebook.codes, 16, progress=False)
    assert len(first) == 4 and all(-1.0 <= r <= 3.5 for r in first)

    # faithful: the share of the rationale's claims that hold for the top item; nothing claimed earns nothing
    items = data.catalog.by_id
    a, b = next((x, y) for x in items for y in items if items[x]["categories"] and items[y]["categories"]
                and not set(items[x]["categories"]) & set(items[y]["categories"]))
    said = tok(f"The next item is in {items[a]['categories'][-1]}.", add_special_tokens=False)["input_ids"]
    assert isinstance(rollout.checker, ClaimChecker)
    assert rollout.faithfulness(said, [], a) == 1.0 and rollout.faithfulness(said, [], b) == 0.0
    assert rollout.faithfulness(tok("Nice.", add_special_tokens=False)["input_ids"], [], a) == 0.0


def test_rollouts_end_as_the_engines_end_a_rationale(aligned_run):
    """GRPO's generate keeps what ``finish_rationale`` keeps (closed at the last sentence end) and closes it."""
    dirs, codebook, model_dir = aligned_run
    _, processor = load_model(model_dir)
    tok = processor.tokenizer
    trie = SIDTrie.from_codebook(codebook, processor)
    close, pad = close_and_pad(tok)
    prompt = tok("<think>", add_special_tokens=False)["input_ids"]
    sampled = [tok(t, add_special_tokens=False)["input_ids"] for t in (" Good pick. It is", " Fine.", " cut")]
    width = max(map(len, sampled)) + 1

    class Sampler:  # stands in for the policy's sampling: rows of prompt + sampled ids (+ </think>), padded
        def generate(self, **kwargs):
            rows = [prompt + s + [close] + [pad] * (width - len(s) - 1) for s in sampled]
            return torch.tensor(rows)

    sampler = Sampler()
    rationale_rule_in_rollouts(sampler, tok, RationaleMask(tok, trie))
    out = sampler.generate(input_ids=torch.tensor([prompt] * 3))
    assert out[:, :len(prompt)].tolist() == [prompt] * 3
    for row, s in zip(out[:, len(prompt):].tolist(), sampled):
        kept, _ = finish_rationale(tok, s + [close], trie.first_token, trie.end_token)
        assert row[:len(kept) + 1] == kept + [close] and set(row[len(kept) + 1:]) <= {pad}
    assert tok.decode(out[0, len(prompt):].tolist()).startswith(" Good pick.")
    assert out[2, len(prompt)] == close  # no sentence ended: an empty think


def test_grpo_learns_which_item_to_cite(aligned_run, tmp_path):
    """A learnable rule: stage 2 answers with the item its rationale cites, citing a random history item; every
    RL user repeats a cycle of 5 items, so the first of the last 5 is always next. Citing it is what earns reward."""
    dirs, _, stage1 = aligned_run
    data = RecDataset.load(dirs.data)
    items, ids, rng = data.catalog.by_id, list(data.catalog.ids), random.Random(0)
    stage2 = ReasonConfig(output_dir=str(tmp_path / "s2"), model=str(stage1), data_dir=str(dirs.data),
                          sids_dir=str(dirs.sids), num_examples=256, max_history=5, rejection_top_n=0, lora_r=0,
                          per_device_train_batch_size=16, max_steps=400, learning_rate=1e-3, save_steps=1000,
                          disable_tqdm=True)
    rows = []
    for n in range(256):  # rationales written here (no teacher): cite one history item, answer that item
        history = rng.sample(ids, 5)
        cited = rng.choice(history)
        title = citation_title(items[cited])
        rows.append({"user_id": f"u{n}", "history": history, "target": cited, "pruned": history,
                     "teacher_rationale": f"{title}.", "rationale": f"{title}."})  # a sentence: rollouts keep it
    save_rows(rows, {"key": reason_fingerprint(stage2)["rationales"]}, tmp_path / "s2" / "rationales")
    cited_model = train_reason(stage2)
    cycles = [{"user_id": f"r{n}", "item_ids": (rng.sample(ids, 5) * 4)[:17]} for n in range(64)]
    RecDataset("cycle5", data.catalog, Interactions.from_rows(cycles)).save(tmp_path / "cycle5")
    train_rl(rl_config((dirs, None, cited_model), tmp_path / "rl", data_dir=str(tmp_path / "cycle5"), num_examples=32,
                       num_generations=8, per_device_train_batch_size=32, max_completion_length=8,
                       learning_rate=3e-4, max_steps=120, save_steps=1000))
    rank = [r["rank"] for r in json.loads((tmp_path / "rl" / "rl_log.json").read_text())]
    first, last = sum(rank[:30]) / 30, sum(rank[-30:]) / 30
    assert last > 1.3 * first, (first, last)  # measured: 0.17 -> 0.35

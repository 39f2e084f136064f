"""Stage 3, reasoning enhancement: TRL GRPO on the stage-2 model with the rollout-beam reward.

    python -m think_rec.finetune.rl --config finetune/configs/rl_tiny.yaml
    think-rec train rl --config finetune/configs/rl_tiny.yaml

Each prompt is the recommend prompt followed by ``<think>``; each of the ``num_generations`` completions is a
sampled rationale written by the decoding's rationale loop (free text and citations of the prompt's items, closed
at its last sentence end, then ``</think>``: what the engines serve); the prompts are training examples or, with
``prompt_split: valid``, valid-split examples no stage trained on; the rewards of ``finetune/rl_rewards.py`` rank
the catalog after it with the served ranking's function: the trie beams alone, or with ``served_ranking: true`` as
the model is served (its prior, item head and history exclusion). Checkpoints go to ``output_dir/`` and resume
from the last one; ``rl_log.json`` (mean reward, reward std, zero-variance group share, KL, rationale length per
step), ``rl_heldout_log.json`` (the same on held-out prompts, with ``eval_examples``) and ``reward_curve.png`` are
written beside them; the merged model goes to ``output_dir/final``.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import datasets
import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList
from trl import GRPOTrainer, TrlParser

from think_rec.data.schema import RecDataset, column
from think_rec.data.split import leave_one_out, sample_users
from think_rec.decoding.claims import ClaimChecker
from think_rec.decoding.search import encode
from think_rec.decoding.think import (THINK_CLOSE, THINK_OPEN, RationaleLogitsProcessor, RationaleMask,
                                      close_and_pad, finish_rationale, generate_rationales,
                                      prompt_items)
from think_rec.decoding.trie import SIDTrie
from think_rec.itemic.codebook import SIDCodebook
from think_rec.model.adapters import make_trainable
from think_rec.model.artefacts import ServedConfig, load_prior, model_codebook
from think_rec.model.loading import load_model

from .align import TimeBudget
from .reason_data import recommend_prompts, sample_examples, with_sids
from .rl_config import RLConfig
from .rl_rewards import BeamRollout
from .run_state import (config_fingerprint, data_fingerprint, model_fingerprint, resume_point, sids_fingerprint,
                        train_and_merge)
from .served import inherit_served

LOGGED = {"reward": "mean_reward", "reward_std": "reward_std", "frac_reward_zero_std": "zero_variance_group_share",
          "kl": "kl", "completions/mean_length": "rationale_length"}


def rl_dataset(config: RLConfig, data: RecDataset, codebook: SIDCodebook, processor,
               heldout: bool = False) -> datasets.Dataset:
    """``prompt`` (the recommend prompt + ``<think>``), ``history`` and ``target``: a seeded sample of
    ``num_examples`` examples of the ``prompt_split``, or (``heldout``) the ``eval_examples`` held-out valid-split
    examples, never among the prompts. Histories are written as ``config.model`` reads them (``model_codebook``)."""
    codebook = model_codebook(codebook, config.model)
    split = leave_one_out(data.interactions, max_history=config.max_history)
    valid = with_sids(split.valid, codebook)
    held = sample_users(valid, config.eval_examples, config.seed) if config.eval_examples else valid.select([])
    if heldout:
        examples = held
    elif config.prompt_split == "valid":
        kept = set(column(held, "user_id"))
        examples = sample_users(valid.filter(lambda u: u not in kept, input_columns="user_id"), config.num_examples,
                                config.seed)
    else:
        examples = sample_examples(split, codebook, config.num_examples, seed=config.seed)
    prompts = recommend_prompts(column(examples, "history"), data.catalog.by_id, codebook, processor)
    return datasets.Dataset.from_dict({"prompt": [p + THINK_OPEN for p in prompts],
                                       "history": column(examples, "history"), "target": column(examples, "target")})


def step_log(log_history: list[dict[str, Any]], prefix: str = "") -> list[dict[str, Any]]:
    """Per logged step: the GRPO figures of ``LOGGED`` (renamed) and each reward's mean; ``prefix="eval_"`` reads
    the held-out evaluations instead of the training steps."""
    rows = []
    for entry in log_history:
        if prefix + "reward" not in entry:
            continue
        entry = {k[len(prefix):]: v for k, v in entry.items() if k.startswith(prefix)} | {"step": entry["step"]}
        row = {"step": entry["step"], **{new: entry[old] for old, new in LOGGED.items() if old in entry}}
        row.update({k.split("/")[1]: v for k, v in entry.items() if k.startswith("rewards/") and k.endswith("/mean")})
        rows.append(row)
    return rows


def plot_reward_curve(rows: list[dict[str, Any]], path: Path, window: int = 20,
                      heldout: list[dict[str, Any]] = ()) -> None:
    """Mean reward by step (faint) and its running mean over ``window`` steps, with the running share of
    zero-variance groups, and the held-out prompts' mean reward where it was measured."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def running(values: list[float]) -> np.ndarray:
        x = np.asarray(values, dtype=float)
        return np.convolve(x, np.ones(window), "valid") / window if len(x) >= window else x

    steps = [r["step"] for r in rows]
    reward = [r["mean_reward"] for r in rows]
    zero = [r.get("zero_variance_group_share", float("nan")) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, reward, color="tab:blue", alpha=0.25, lw=0.8)
    tail = steps[len(steps) - len(running(reward)):]
    ax.plot(tail, running(reward), color="tab:blue", label=f"mean reward ({window}-step mean)")
    ax.plot(tail, running(zero), color="tab:orange", label=f"zero-variance groups ({window}-step mean)")
    if heldout:
        ax.plot([r["step"] for r in heldout], [r["mean_reward"] for r in heldout], "o-", color="tab:green",
                label="held-out prompts: mean reward")
    ax.set_xlabel("GRPO step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rationale_rule_in_rollouts(model, tok, mask: RationaleMask) -> None:
    """GRPO samples rationales with ``model.generate``: give it the decoding's rationale loop, so rollouts are
    written as at inference: the rationale rule (``RationaleMask``, each row citing the items its prompt shows) and
    the engines' ending (``finish_rationale``: closed at the last sentence end, then ``</think>``)."""
    generate = model.generate
    close_id, pad_id = close_and_pad(tok)

    def generate_with_rule(*args, **kwargs):
        prompts = kwargs["input_ids"]
        cites = [mask.citable(prompt_items(mask.trie, row.tolist())) for row in prompts]
        rule = RationaleLogitsProcessor(mask, cites, prompts.shape[1])
        kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), rule])
        out = generate(*args, **kwargs)
        width = prompts.shape[1]
        thinks = [finish_rationale(tok, row, mask.trie.first_token, mask.trie.end_token)[0] + [close_id]
                  for row in out[:, width:].tolist()]
        rows = [t + [pad_id] * (max(map(len, thinks)) - len(t)) for t in thinks]
        return torch.cat([out[:, :width], torch.tensor(rows, dtype=out.dtype, device=out.device)], dim=1)

    model.generate = generate_with_rule


def reward_rollout(config: RLConfig, tok, trie: SIDTrie, data: RecDataset) -> BeamRollout:
    """The rollout the rewards read: ``num_beams`` beams, the served ranking with ``served_ranking``, the catalog's
    claims for the ``faithful`` reward. Its ``model`` is set by the caller."""
    rollout = BeamRollout(tok, trie, tok.convert_tokens_to_ids(THINK_CLOSE), config.num_beams)
    if config.served_ranking:  # the model's artefact is read only when the reward uses it
        rollout.prior = load_prior(config.model)
        rollout.exclude_history = ServedConfig.load(config.model).exclude_history
    if "faithful" in config.rewards:
        rollout.checker = ClaimChecker(data.catalog.by_id)
    return rollout


def heldout_rewards(model, tok, trie: SIDTrie, examples: datasets.Dataset, rollout: BeamRollout,
                    rewards: dict[str, float], codes: dict[str, Sequence[int]], max_think_tokens: int,
                    batch_size: int = 16, progress: bool = True) -> list[float]:
    """Per example of ``rl_dataset`` (``prompt``, ``history``, ``target``), the weighted ``rewards`` of the
    rationale ``model`` writes as served (greedy, under the rationale rule, closed at a sentence end)."""
    rollout.model = model
    funcs = rollout.reward_functions(codes, list(rewards))
    out: list[float] = []
    for s in tqdm(range(0, len(examples), batch_size), desc="held-out reward", disable=not progress):
        batch = examples[s:s + batch_size]
        prompts = [p.removesuffix(THINK_OPEN) for p in batch["prompt"]]
        rows = generate_rationales(model, tok, prompts, trie, citable=batch["history"],
                                   max_think_tokens=max_think_tokens)
        completions = [r[0][len(ids) + 1:] for r, ids in zip(rows, encode(tok, prompts))]  # after <think>
        scores = [f(prompts=batch["prompt"], completions=None, completion_ids=completions, target=batch["target"],
                    history=batch["history"]) for f in funcs]
        out += [sum(w * f[n] for w, f in zip(rewards.values(), scores)) for n in range(len(prompts))]
    return out


def train_rl(config: RLConfig) -> Path:
    """GRPO from the stage-2 model, merge; returns ``output_dir/final``."""
    config.require()
    data = RecDataset.load(config.data_dir)
    codebook = model_codebook(config.sids_dir, config.model)
    fingerprint = {"config": config_fingerprint(config), "data": data_fingerprint(config.data_dir),
                   "sids": sids_fingerprint(config.sids_dir), "base": model_fingerprint(config.model)}
    out, final = Path(config.output_dir), Path(config.output_dir) / "final"
    last = resume_point(config, fingerprint, overwrite=config.overwrite, outputs=[final])
    model, processor = load_model(config.model)
    tok = getattr(processor, "tokenizer", processor)
    missing = [t for t in [*codebook.vocabulary(), THINK_OPEN, THINK_CLOSE] if t not in tok.get_vocab()]
    if missing:
        raise ValueError(f"{config.model}: the tokenizer lacks {missing[0]!r}; train stages 1 and 2 on this "
                         "codebook first")
    trie = SIDTrie.from_codebook(codebook, processor)
    close_id = tok.convert_tokens_to_ids(THINK_CLOSE)
    model.generation_config.eos_token_id = [tok.eos_token_id, close_id]  # a rationale ends at </think>
    model = make_trainable(model, tok.convert_tokens_to_ids([*codebook.vocabulary(), THINK_CLOSE]),
                           r=config.lora_r, alpha=config.lora_alpha)
    rollout = reward_rollout(config, tok, trie, data)
    deadline = None if config.time_budget_minutes is None else time.monotonic() + 60 * config.time_budget_minutes
    measured = config.eval_examples and config.eval_strategy != "no"
    trainer = GRPOTrainer(model=model, reward_funcs=rollout.reward_functions(codebook.codes, list(config.rewards)),
                          args=config, train_dataset=rl_dataset(config, data, codebook, processor),
                          eval_dataset=rl_dataset(config, data, codebook, processor, heldout=True)
                          if measured else None,
                          processing_class=tok, callbacks=[TimeBudget(deadline)])
    rollout.model = trainer.model
    rationale_rule_in_rollouts(trainer.model, tok, RationaleMask(tok, trie))
    if config.use_vllm:
        warnings.warn("use_vllm: vLLM samples the rollouts without the rationale rule (RationaleMask: SID tokens "
                      "only as citations of the prompt's items), which applies to transformers generation only",
                      stacklevel=2)

    def write_logs(step: int) -> None:
        rows, heldout = step_log(trainer.state.log_history), step_log(trainer.state.log_history, "eval_")
        (out / "rl_log.json").write_text(json.dumps(rows, indent=1))
        (out / "rl_heldout_log.json").write_text(json.dumps(heldout, indent=1))
        if rows:
            plot_reward_curve(rows, out / "reward_curve.png", heldout=heldout)

    return inherit_served(config.model, train_and_merge(trainer, processor, last, final, fingerprint, write_logs))


def main(argv: list[str] | None = None) -> Path:
    (config,) = TrlParser((RLConfig,)).parse_args_and_config(argv)
    final = train_rl(config)
    print(f"GRPO model: {final}")
    return final


if __name__ == "__main__":
    main()

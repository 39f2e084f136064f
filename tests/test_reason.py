"""Stage 2: the loss mask, loss weights, the self teacher, and a short real training run that resumes."""
from __future__ import annotations

import json
import re
import shutil
from types import SimpleNamespace

import pytest
import torch

from think_rec.data.schema import column
from think_rec.data.split import leave_one_out
from think_rec.decoding import SIDTrie, think_then_recommend
from think_rec.decoding.claims import ClaimChecker, faithful
from think_rec.decoding.prior import CollaborativePrior, MarkovModel
from think_rec.finetune.rationales import RationaleRequest, SelfTeacher, TeacherError, TemplateTeacher, make_teacher
from think_rec.finetune.reason import ReasonTrainer, prior_candidates, reason_fingerprint, train_reason
from think_rec.finetune.reason_config import ReasonConfig
from think_rec.finetune.rationale_filters import citation_title
from think_rec.finetune.reason_data import (build_rationales, encode_citations, load_rows, sample_examples, save_rows,
                                            tokenize_rows)
from think_rec.finetune.run_state import RunChanged
from think_rec.model.artefacts import ServedConfig
from think_rec.model.loading import load_model, load_processor
from think_rec.prompts import render_recommend_prompt


@pytest.fixture(scope="module")
def rows(aligned_run, synthetic_dataset):
    dirs, codebook, _ = aligned_run
    examples = sample_examples(leave_one_out(synthetic_dataset.interactions, max_history=6), codebook, 12, seed=1)
    built, stats = build_rationales(examples, synthetic_dataset, codebook, dirs.sids, TemplateTeacher(), top_n=None,
                                    progress=False)
    assert stats["rank_check"] is False and stats["examples"] == 12
    return built


def test_rationales_claim_only_what_the_priors_top_items_carry(aligned_run, synthetic_dataset, tmp_path):
    dirs, codebook, _ = aligned_run
    split = leave_one_out(synthetic_dataset.interactions, max_history=6)
    prior = CollaborativePrior(MarkovModel.fit(column(split.train, "item_ids")))
    prior.save(tmp_path)
    ServedConfig(exclude_history=True).save(tmp_path)
    top3 = prior_candidates(tmp_path, 3)
    seen: list[RationaleRequest] = []

    class Recording(TemplateTeacher):
        def generate(self, requests):
            seen.extend(requests)
            return super().generate(requests)

    examples = sample_examples(split, codebook, 12, seed=1)
    rows, _ = build_rationales(examples, synthetic_dataset, codebook, dirs.sids, Recording(), top_n=None,
                               candidates=top3, progress=False)
    checker, items = ClaimChecker(synthetic_dataset.catalog.by_id), synthetic_dataset.catalog.by_id
    claimed = 0
    for request, row in zip(seen, rows):
        ids = [c["item_id"] for c in request.candidates]
        assert ids == top3(row["history"], row["target"]) and len(ids) == 3
        assert row["target"] not in ids and not set(ids) & set(row["history"])
        for sentence in re.split(r"(?<=\.) ", row["teacher_rationale"]):
            claims = checker.claims(sentence, row["pruned"])
            claimed += len(claims)
            assert any(faithful(claims, items[i]) for i in ids), sentence
    assert claimed, "some rationale claims what a candidate carries"
    model = tmp_path / "model"
    shutil.copytree(aligned_run[2], model)
    prior.save(model)

    def key(n: int) -> str:
        config = ReasonConfig(output_dir=str(tmp_path / "r"), model=str(model), data_dir=str(dirs.data),
                              sids_dir=str(dirs.sids), claim_support_top_n=n)
        return reason_fingerprint(config)["rationales"]

    before = key(3), key(0)
    prior.weight = 2.0  # a rebuilt prior (its file changed): the rationales are built again
    prior.save(model)
    assert key(3) != before[0] and key(0) == before[1]
    with pytest.raises(ValueError, match="template teacher only"):
        ReasonConfig(output_dir=str(tmp_path / "r"), teacher="self", claim_support_top_n=3)


def test_loss_mask_covers_exactly_rationale_and_item_tokens(aligned_run, synthetic_dataset, rows):
    dirs, codebook, model_dir = aligned_run
    processor = load_processor(model_dir)
    tok = processor.tokenizer
    rows = [*rows[:3], {**rows[3], "rationale": ""}]  # one rejected example: an empty think
    table = tokenize_rows(rows, synthetic_dataset, codebook, processor)
    items = {r["item_id"]: r for r in synthetic_dataset.catalog.items.to_list()}
    open_id, close_id = tok.convert_tokens_to_ids(["<think>", "</think>"])
    for row, ids, labels in zip(rows, table["input_ids"], table["labels"]):
        prompt = render_recommend_prompt(row["history"], items, codebook, processor, with_images=False).text
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        cited = [h for h in row["history"] if citation_title(items[h]) in row["rationale"]]
        encoded = encode_citations(row["rationale"], [items[h] for h in row["history"]], codebook)
        assert all(codebook.sid_string(h) in encoded and citation_title(items[h]) not in encoded for h in cited)
        assert not row["rationale"] or cited, "template rationales cite history items"
        rationale = tok(encoded, add_special_tokens=False)["input_ids"] if row["rationale"] else []
        sid = tok.convert_tokens_to_ids(codebook.tokens(row["target"]))
        assert ids == prompt_ids + [open_id] + rationale + [close_id] + sid + [tok.eos_token_id]
        trained = [t for t, lab in zip(ids, labels) if lab != -100]
        assert trained == rationale + [close_id] + sid
        first = labels.index(next(lab for lab in labels if lab != -100))
        assert first == len(prompt_ids) + 1 and all(lab == -100 for lab in labels[:first]) and labels[-1] == -100
        assert all(lab == t for t, lab in zip(ids, labels) if lab != -100)
        assert tok.decode(rationale).strip() == encoded
    # too long for max_length: the oldest history items go, the rationale and the answer stay whole
    longest = max(range(len(table)), key=lambda i: len(table[i]["input_ids"]))
    limit = len(table[longest]["input_ids"]) - 5
    fitted = tokenize_rows([rows[longest]], synthetic_dataset, codebook, processor, max_length=limit)[0]
    assert len(fitted["input_ids"]) <= limit
    assert [t for t in fitted["labels"] if t != -100] == [t for t in table[longest]["labels"] if t != -100]


def test_token_weights_split_rationale_and_item():
    args = SimpleNamespace(item_loss_weight=3.0, rationale_loss_weight=0.5)
    fake = SimpleNamespace(args=args, item_token_ids=torch.tensor([7, 8, 9]))
    labels = torch.tensor([[-100, 4, 5, 7, 8, -100], [-100, -100, 9, 2, -100, -100]])
    weights = ReasonTrainer.token_weights(fake, labels)
    assert weights.tolist() == [[0, 0.5, 0.5, 3, 3, 0], [0, 0, 3, 0.5, 0, 0]]


def test_rationale_rows_round_trip_and_bad_file(tmp_path, rows):
    save_rows(rows, {"acceptance_rate": 1.0}, tmp_path)
    loaded, stats = load_rows(tmp_path)
    assert loaded == rows and stats["acceptance_rate"] == 1.0
    lines = (tmp_path / "rationales.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])
    del bad["pruned"]
    (tmp_path / "rationales.jsonl").write_text("\n".join([lines[0], json.dumps(bad), *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"rationales.jsonl:2: missing field 'pruned'"):
        load_rows(tmp_path)


def test_self_teacher_writes_plain_text(aligned_run, synthetic_dataset):
    _, codebook, model_dir = aligned_run
    model, processor = load_model(model_dir)
    items = synthetic_dataset.catalog.items.to_list()
    requests = [RationaleRequest("u", items[i:i + 3], items[i + 5]) for i in range(3)]
    teacher = make_teacher("self", model=model, processor=processor, max_new_tokens=12,
                           do_sample=True, temperature=1.0, batch_size=2)
    assert isinstance(teacher, SelfTeacher)
    texts = teacher.generate(requests)
    assert len(texts) == 3 and all(isinstance(t, str) and t for t in texts)
    assert not any("<s_" in t or "sid_" in t or "think>" in t for t in texts)


def test_train_reason_resumes_and_think_decoding_yields_items(aligned_run, synthetic_dataset, tmp_path):
    dirs, codebook, model_dir = aligned_run
    config = dict(output_dir=str(tmp_path / "reason"), model=str(model_dir), data_dir=str(dirs.data),
                  sids_dir=str(dirs.sids), num_examples=24, max_history=5, rejection_top_n=10,
                  rejection_batch_size=12, per_device_train_batch_size=8, max_steps=3, save_steps=3,
                  learning_rate=1e-3, item_loss_weight=2.0, disable_tqdm=True)
    final = train_reason(ReasonConfig(**config))
    stats = json.loads((tmp_path / "reason" / "reason_stats.json").read_text())
    assert stats["steps"] == 3 and stats["examples"] == 24 and stats["rank_check"]
    assert stats["accepted"] + stats["rejected_rank"] + stats["rejected_leakage"] + stats["rejected_ungrounded"] == 24
    assert stats["acceptance_rate"] == pytest.approx(stats["accepted"] / 24)
    rows, _ = load_rows(tmp_path / "reason" / "rationales")
    assert sum(bool(r["rationale"]) for r in rows) == stats["accepted"]

    # rerun with more steps: resumes from checkpoint-3 and reuses the rationales
    final = train_reason(ReasonConfig(**{**config, "max_steps": 5}))
    log = json.loads((tmp_path / "reason" / "log_history.json").read_text())
    assert log[-1]["step"] == 5
    assert (tmp_path / "reason" / "checkpoint-5").is_dir()

    model, processor = load_model(final)
    model.eval()
    trie = SIDTrie.from_codebook(codebook, processor)
    items = {r["item_id"]: r for r in synthetic_dataset.catalog.items.to_list()}
    prompts = [render_recommend_prompt(r["history"], items, codebook, processor, with_images=False).text
               for r in rows[:3]]
    results = think_then_recommend(model, processor, prompts, trie, k=5, max_think_tokens=16)
    for r in results:
        assert len(r.rationales) == 1 and len(r.items) == 5
        assert all(i in codebook.codes for i, _ in r.items)


def test_train_reason_full_finetune_without_rank_check(aligned_run, tmp_path):
    dirs, codebook, model_dir = aligned_run
    final = train_reason(ReasonConfig(output_dir=str(tmp_path / "full"), model=str(model_dir), data_dir=str(dirs.data),
                                      sids_dir=str(dirs.sids), num_examples=16, max_history=4, rejection_top_n=0,
                                      lora_r=0, per_device_train_batch_size=8, max_steps=2, save_steps=2,
                                      disable_tqdm=True))
    stats = json.loads((tmp_path / "full" / "reason_stats.json").read_text())
    assert not stats["rank_check"] and stats["rejected_rank"] == 0 and stats["steps"] == 2
    before, _ = load_model(model_dir)
    after, _ = load_model(final)
    changed = [n for (n, a), (_, b) in zip(before.named_parameters(), after.named_parameters())
               if not torch.equal(a, b)]
    assert any("layers.0.self_attn" in n for n in changed), "full fine-tuning must move the base weights"


def openai_reason(aligned_run, out, server, **kw) -> dict:
    dirs, _, model_dir = aligned_run
    teacher_kwargs = {"base_url": server.url, "model": "fake", "max_retries": 0, "cache_dir": str(out / "cache")}
    return dict(output_dir=str(out / "reason"), model=str(model_dir), data_dir=str(dirs.data), sids_dir=str(dirs.sids),
                teacher="openai", teacher_kwargs=teacher_kwargs, num_examples=8, max_history=4, rejection_top_n=0,
                per_device_train_batch_size=4, max_steps=2, save_steps=2, disable_tqdm=True, **kw)


def test_api_key_is_refused_in_configs_and_never_pickled(aligned_run, tmp_path, monkeypatch, fake_openai):
    server = fake_openai(delay=0.0)
    config = openai_reason(aligned_run, tmp_path, server)
    with pytest.raises(ValueError, match="api_key.*OPENAI_API_KEY"):
        ReasonConfig(**{**config, "teacher_kwargs": {**config["teacher_kwargs"], "api_key": "sk-in-config"}})
    monkeypatch.setenv("THINK_REC_TEST_KEY", "sk-secret-from-env")
    config["teacher_kwargs"]["api_key_env"] = "THINK_REC_TEST_KEY"
    train_reason(ReasonConfig(**config))
    assert server.auth == {"Bearer sk-secret-from-env"}
    pickled = (tmp_path / "reason" / "checkpoint-2" / "training_args.bin").read_bytes()
    assert b"THINK_REC_TEST_KEY" in pickled and b"sk-secret" not in pickled

    # the rationales depend on prune_k: a change is refused, and with overwrite they are built again
    key = json.loads((tmp_path / "reason" / "rationales" / "rationale_stats.json").read_text())["key"]
    with pytest.raises(RunChanged, match=r"config\.prune_k.*rationales"):
        train_reason(ReasonConfig(**{**config, "prune_k": 2}))
    train_reason(ReasonConfig(**{**config, "prune_k": 2, "overwrite": True}))
    assert json.loads((tmp_path / "reason" / "rationales" / "rationale_stats.json").read_text())["key"] != key


def test_teacher_outage_aborts_and_caches_nothing(aligned_run, tmp_path, fake_openai):
    server = fake_openai(fail_first=10**6, delay=0.0)
    with pytest.raises(TeacherError, match="failed on 8 of 8 requests"):
        train_reason(ReasonConfig(**openai_reason(aligned_run, tmp_path, server)))
    assert server.calls == 24  # every request, asked 1 + teacher_retries times
    assert load_rows(tmp_path / "reason" / "rationales") is None
    assert not list((tmp_path / "reason").glob("checkpoint-*"))


def test_failed_teacher_requests_are_left_out_not_rejected(aligned_run, synthetic_dataset):
    dirs, codebook, _ = aligned_run
    examples = sample_examples(leave_one_out(synthetic_dataset.interactions, max_history=6), codebook, 10, seed=1)
    bad = examples[0]["user_id"]
    failed = sum(u == bad for u in examples["user_id"])

    def flaky(request):
        if request.user_id == bad:
            raise ConnectionError("teacher down")
        return TemplateTeacher().generate([request])[0]

    teacher = make_teacher("self", fn=flaky, batched=False)
    rows, stats = build_rationales(examples, synthetic_dataset, codebook, dirs.sids, teacher, top_n=None, retries=1,
                                   retry_backoff=0.0, max_failure_rate=0.5, progress=False)
    assert stats["teacher_failures"] == failed and stats["examples"] == len(rows) == 10 - failed
    assert bad not in {r["user_id"] for r in rows} and all(r["teacher_rationale"] for r in rows)
    assert stats["accepted"] + stats["rejected_leakage"] + stats["rejected_ungrounded"] == 10 - failed
    with pytest.raises(TeacherError, match=f"failed on {failed} of 10"):
        build_rationales(examples, synthetic_dataset, codebook, dirs.sids, teacher, top_n=None, retries=0,
                         max_failure_rate=0.05, progress=False)

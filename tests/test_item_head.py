"""The item-level head: its loss, its tokens through stage 1 and save/load, and its place in the served ranking."""
from __future__ import annotations

import json
from collections import Counter

import datasets
import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen3Config, Qwen3ForCausalLM

from think_rec.decoding.trie import SIDTrie
from think_rec.finetune.item_head import ItemHeadLoss

BEGIN, END = 10, 20
SEQS = {"a": [BEGIN, 11, 14, END], "b": [BEGIN, 12, 15, END], "c": [BEGIN, 13, 16, END]}


def _toy():
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    model = Qwen3ForCausalLM(config)
    trie = SIDTrie(SEQS)
    trie.item_token_ids = torch.tensor([30, 31, 32])
    return model, trie


def test_item_loss_is_the_cross_entropy_over_item_rows_at_supervised_sid_begins():
    model, trie = _toy()
    head = ItemHeadLoss(model, trie, weight=0.5)
    ids = torch.tensor([[5, *SEQS["a"], *SEQS["c"], *SEQS["b"]]])
    labels = ids.clone()
    labels[0, :5] = -100  # the first item is context: no SID supervised after its <|sid_begin|>
    out = model(input_ids=ids, output_hidden_states=True)
    hidden = out.hidden_states[-1][0]
    rows = model.lm_head.weight[[30, 31, 32]]
    expected = F.cross_entropy(hidden[[5, 9]] @ rows.T, torch.tensor([2, 1]), reduction="sum")
    tokens = int((labels[:, 1:] != -100).sum())
    loss = head(ids, labels, tokens)
    assert torch.allclose(loss, 0.5 * expected * (trie.levels + 2) / tokens, atol=1e-5)
    loss.backward()
    assert model.lm_head.weight.grad[[30, 31, 32]].abs().sum() > 0


def test_distillation_softens_each_label_towards_the_successors_of_the_item_before_it():
    from think_rec.decoding.prior import MarkovModel

    model, trie = _toy()
    teacher = MarkovModel([["a", "c"], ["a", "b"], ["a", "c"]])  # a -> c twice, a -> b once; c has no successor
    head = ItemHeadLoss(model, trie, weight=1.0, teacher=teacher, distill=0.4)
    ids = torch.tensor([[5, *SEQS["a"], *SEQS["c"], *SEQS["b"]]])
    labels = ids.clone()
    labels[0, :5] = -100
    rows, cols, items, prev = head.targets(ids, labels)
    assert cols.tolist() == [5, 9] and items.tolist() == [2, 1] and prev.tolist() == [0, 2]
    out = model(input_ids=ids, output_hidden_states=True)
    logp = F.log_softmax(out.hidden_states[-1][0, [5, 9]] @ model.lm_head.weight[[30, 31, 32]].T, -1)
    soft = torch.tensor([[0.0, 0.4 / 3, 0.6 + 0.4 * 2 / 3],  # c after a: 0.6 on c, 0.4 on a's successors
                         [0.0, 1.0, 0.0]])  # b after c: c never had a successor, the label alone
    tokens = int((labels[:, 1:] != -100).sum())
    expected = -(soft * logp).sum() * (trie.levels + 2) / tokens
    assert torch.allclose(head(ids, labels, tokens), expected, atol=1e-5)
    with pytest.raises(ValueError, match="teacher"):
        ItemHeadLoss(model, trie, distill=0.4)


def test_item_teacher_softens_each_label_towards_the_items_phase_model_on_the_item_stream():
    """``item_teacher``: a share of each label goes to the teacher's next-item distribution after the earlier items of
    the label's own sequence, written as item tokens (a packed row's sequences start where ``position_ids`` is 0)."""
    model, trie = _toy()
    torch.manual_seed(1)
    teacher = Qwen3ForCausalLM(model.config)
    head = ItemHeadLoss(model, trie, weight=1.0, item_teacher=(teacher, 0.4))
    ids = torch.tensor([[5, *SEQS["a"], *SEQS["c"], *SEQS["b"]]])
    labels = ids.clone()
    labels[0, :5] = -100
    with torch.no_grad():
        taught = teacher(input_ids=torch.tensor([[30, 32]])).logits[0, :, 30:33].softmax(-1)  # after a; after a, c
    out = model(input_ids=ids, output_hidden_states=True)
    logp = F.log_softmax(out.hidden_states[-1][0, [5, 9]] @ model.lm_head.weight[[30, 31, 32]].T, -1)
    soft = 0.6 * F.one_hot(torch.tensor([2, 1]), 3) + 0.4 * taught  # c after a, b after a, c
    tokens = int((labels[:, 1:] != -100).sum())
    assert torch.allclose(head(ids, labels, tokens), -(soft * logp).sum() * (trie.levels + 2) / tokens, atol=1e-5)

    packed = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3]])  # b starts a second sequence: its label stays hard
    out = model(input_ids=ids, position_ids=packed, output_hidden_states=True)
    logp = F.log_softmax(out.hidden_states[-1][0, [5, 9]] @ model.lm_head.weight[[30, 31, 32]].T, -1)
    soft = torch.stack([0.6 * F.one_hot(torch.tensor(2), 3) + 0.4 * taught[0], F.one_hot(torch.tensor(1), 3)])
    assert torch.allclose(head(ids, labels, tokens, packed), -(soft * logp).sum() * (trie.levels + 2) / tokens,
                          atol=1e-5)
    with pytest.raises(ValueError, match="alternatives"):
        ItemHeadLoss(model, trie, teacher=object(), distill=0.4, item_teacher=(teacher, 0.4))


def test_sampled_softmax_scores_each_label_against_uniform_draws():
    """``sampled_item_negatives``: with every token drawn it is the full softmax; with fewer, each row's label is
    column 0 beside the shared draws, a draw equal to the label masked, and the loss below the full one."""
    from think_rec.finetune.align_config import AlignConfig
    from think_rec.finetune.label_softmax import group_cross_entropy, sampled_logits

    model, _ = _toy()
    head = model.get_output_embeddings()
    hidden = torch.randn(6, 32)
    ids = torch.arange(20, 40)
    target = torch.tensor([20, 25, 25, 31, 39, 22])
    full = F.cross_entropy(hidden @ head.weight[ids].T, target - 20)
    torch.manual_seed(1)
    logits, column = sampled_logits(hidden, head, ids, target, len(ids))
    assert torch.allclose(F.cross_entropy(logits, column), full, atol=1e-5)
    torch.manual_seed(1)
    drawn = ids[torch.randperm(len(ids))[:5]]  # the draw sampled_logits makes with the same seed
    torch.manual_seed(1)
    logits, column = sampled_logits(hidden, head, ids, target, 5)
    assert logits.shape == (6, 6) and column.tolist() == [0] * 6
    assert torch.allclose(logits[:, 0], (hidden * head.weight[target]).sum(-1))
    assert torch.equal(torch.isinf(logits[:, 1:]), drawn[None] == target[:, None])
    assert F.cross_entropy(logits, column) < full
    torch.manual_seed(1)
    assert torch.allclose(group_cross_entropy(hidden, head, ids, target, 5), F.cross_entropy(logits, column) * 6)
    assert torch.allclose(group_cross_entropy(hidden, head, ids, target, 0), full * 6, atol=1e-4)
    with pytest.raises(ValueError, match="sampled_item_negatives"):
        AlignConfig(output_dir="out", phase="items", item_head=True, sampled_item_negatives=-1)


def test_sequence_label_groups_split_sid_and_item_labels_only_when_items_are_sampled():
    """The recipe's one softmax over SID and item tokens; with sampled item negatives, a group per kind."""
    from think_rec.finetune.align import sequence_label_groups
    from think_rec.finetune.align_config import AlignConfig

    config = AlignConfig(output_dir="out", phase="sequence", item_head=True, sequence_item_streams=True)
    assert sequence_label_groups(config, [1, 2], [7, 8, 9]) == [([1, 2, 7, 8, 9], 0)]
    config.sampled_item_negatives = 2
    assert sequence_label_groups(config, [1, 2], [7, 8, 9]) == [([1, 2], 0), ([7, 8, 9], 2)]
    config.sequence_item_streams = False
    assert sequence_label_groups(config, [1, 2], [7, 8, 9]) == [([1, 2], 0)]
    config.sequence_sid_softmax = False
    assert sequence_label_groups(config, [1, 2], [7, 8, 9]) is None


def test_item_head_with_sampled_negatives_scores_each_label_against_the_draws():
    """The item head's sampled softmax: the label's row beside N drawn item rows, weighted as the full loss."""
    model, trie = _toy()
    head = ItemHeadLoss(model, trie, weight=0.5, sampled_negatives=2)
    ids = torch.tensor([[5, *SEQS["a"], *SEQS["c"], *SEQS["b"]]])
    labels = ids.clone()
    labels[0, :5] = -100
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, [5, 9]]
    torch.manual_seed(3)
    drawn = torch.tensor([30, 31, 32])[torch.randperm(3)[:2]]
    target = torch.tensor([32, 31])
    logits = torch.cat([(hidden * model.lm_head.weight[target]).sum(-1, keepdim=True),
                        (hidden @ model.lm_head.weight[drawn].T).masked_fill(drawn == target[:, None], -torch.inf)], 1)
    expected = F.cross_entropy(logits, torch.zeros(2, dtype=torch.long), reduction="sum")
    tokens = int((labels[:, 1:] != -100).sum())
    torch.manual_seed(3)
    assert torch.allclose(head(ids, labels, tokens), 0.5 * expected * (trie.levels + 2) / tokens, atol=1e-5)
    with pytest.raises(ValueError, match="distill"):
        ItemHeadLoss(model, trie, teacher=object(), distill=0.5, sampled_negatives=2)


def test_no_supervised_sid_gives_zero_loss():
    model, trie = _toy()
    head = ItemHeadLoss(model, trie)
    ids = torch.tensor([[5, *SEQS["a"]]])
    model(input_ids=ids)
    assert head(ids, torch.full_like(ids, -100), 1).item() == 0.0


def test_item_tokens_round_trip_and_score_the_whole_catalog(aligned_run, synthetic_dataset):
    from think_rec.data.split import leave_one_out
    from think_rec.decoding.search import item_logprobs
    from think_rec.eval.metrics import aggregate
    from think_rec.model.artefacts import RecModel
    from think_rec.prompts import served_prompt

    dirs, codebook, model_dir = aligned_run
    rec = RecModel.load(model_dir, codebook, synthetic_dataset)
    assert rec.trie.item_token_ids is not None and len(rec.trie.item_token_ids) == len(codebook)
    tok = rec.processor.tokenizer
    assert tok.convert_ids_to_tokens(rec.trie.item_token_ids[:2].tolist()) == codebook.item_tokens()[:2]
    split = leave_one_out(synthetic_dataset.interactions, max_history=5)
    users = split.valid.select(range(100))
    prompts = [tok(served_prompt(tok, h, rec.dataset.catalog, codebook, 5))["input_ids"] for h in users["history"]]
    scores = item_logprobs(rec.model, rec.processor, prompts, rec.trie)
    assert scores.shape == (100, len(codebook)) and torch.allclose(scores.exp().sum(-1), torch.ones(100), atol=1e-4)
    top = [[rec.trie.items[n] for n in row.topk(10).indices.tolist()] for row in scores]
    by_count = [i for i, _ in Counter(i for seq in split.train["item_ids"] for i in seq).most_common(10)]
    learned = aggregate(top, users["target"], (10,))["recall@10"]
    assert learned > aggregate([by_count] * 100, users["target"], (10,))["recall@10"]
    prior = json.loads((model_dir / "prior.json").read_text())
    assert "valid_ndcg@10_by_item_weight" in prior["selection"] and prior["item_weight"] == rec.prior.item_weight


def test_item_inputs_write_each_history_item_with_its_item_token(aligned_run, synthetic_dataset, tmp_path):
    from think_rec.finetune.align_config import AlignConfig
    from think_rec.model.artefacts import ServedConfig, model_codebook
    from think_rec.prompts import served_prompt

    dirs, codebook, model_dir = aligned_run
    first, second = list(codebook.codes)[:2]
    reading = codebook.with_item_inputs()
    assert reading.sid_string(second) == codebook.sid_string(second) == codebook.history_string(second)
    assert reading.history_string(second) == codebook.sid_string(second) + "<|i_1|>"
    assert reading.with_item_inputs(True) is reading and not reading.with_item_inputs(False).item_inputs

    assert not model_codebook(codebook, tmp_path).item_inputs  # a model without served.json: SIDs only
    ServedConfig(item_inputs=True).save(tmp_path)
    assert model_codebook(dirs.sids, tmp_path).item_inputs

    tok = __import__("transformers").AutoTokenizer.from_pretrained(str(model_dir))
    history = [first, second]
    plain, read = (tok(served_prompt(tok, history, synthetic_dataset.catalog, c, 5))["input_ids"]
                   for c in (codebook, reading))
    items = tok.convert_tokens_to_ids(codebook.item_tokens()[:2])
    assert len(read) == len(plain) + 2 and [t for t in read if t in items] == items  # one id each, in order
    with pytest.raises(ValueError, match="item_head"):
        AlignConfig(output_dir=str(tmp_path), item_inputs=True)


def test_history_without_titles_writes_one_line_of_ids_per_item(aligned_run, synthetic_dataset, tmp_path):
    """``history_titles: false``: each history item is its IDs (SID, item token) on a line of its own, no number
    and no title; the model's ``served.json`` records it and every prompt builder reads it from the codebook."""
    from think_rec.model.artefacts import ServedConfig, model_codebook
    from think_rec.prompts import served_prompt

    dirs, codebook, model_dir = aligned_run
    history = list(codebook.codes)[:3]
    compact = codebook.with_item_inputs().with_history_titles(False)
    assert compact.with_history_titles(False) is compact and compact.with_history_titles().history_titles
    tok = __import__("transformers").AutoTokenizer.from_pretrained(str(model_dir))
    titled, bare = (served_prompt(tok, history, synthetic_dataset.catalog, c, 5)
                    for c in (codebook.with_item_inputs(), compact))
    lines = "\n".join(compact.history_string(i) for i in history)
    assert f"oldest first:\n{lines}\nRecommend" in bare
    titles = [synthetic_dataset.catalog[i]["title"] for i in history]
    assert all(t in titled and t not in bare for t in titles) and len(tok(bare)["input_ids"]) < len(
        tok(titled)["input_ids"])

    assert model_codebook(codebook, tmp_path).history_titles  # a model without served.json: titled lines
    ServedConfig(item_inputs=True, history_titles=False).save(tmp_path)
    read = model_codebook(dirs.sids, tmp_path)
    assert read.item_inputs and not read.history_titles


def test_stage1_with_item_inputs_distillation_untitled_history_records_them(aligned_run, synthetic_dataset, tmp_path):
    from think_rec.data.split import leave_one_out
    from think_rec.finetune.align import train_align
    from think_rec.finetune.align_config import AlignConfig
    from think_rec.finetune.served import served_ranking
    from think_rec.model.artefacts import RecModel

    dirs, codebook, _ = aligned_run
    config = AlignConfig(output_dir=str(tmp_path), model=str(dirs.tiny), data_dir=str(dirs.data),
                         sids_dir=str(dirs.sids), phase="sequence,multitask", task_mix={"sequential": 1.0},
                         with_images=False, max_history=5, sequence_max_items=8, item_head=True, item_inputs=True,
                         item_distill=0.5, history_titles=False, max_steps=4, num_examples=32,
                         max_length=256, per_device_train_batch_size=8, learning_rate=3e-3, prior_valid_users=16,
                         save_steps=1000, logging_steps=2, disable_tqdm=True)
    rec = RecModel.load(train_align(config), dirs.sids, synthetic_dataset)
    assert rec.served.item_inputs and rec.codebook.item_inputs
    assert not rec.served.history_titles and not rec.codebook.history_titles
    logs = json.loads((tmp_path / "sequence" / "log_history.json").read_text())
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in logs if "loss" in e)
    users = leave_one_out(synthetic_dataset.interactions, max_history=5).test.select(range(8))
    ranked = served_ranking(rec, users["history"])
    assert all(len(r) == 10 and all(i in codebook.codes for i, _ in r) for r in ranked)


def test_items_phase_streams_item_tokens_and_trains_the_item_softmax(aligned_run, synthetic_dataset, tmp_path):
    """The ``items`` warm start: one item token per item, every item after the first supervised, its loss the
    cross-entropy over the item rows alone (SASRec-CE's); a short run lowers it, keeps its best weights by the
    item tokens' valid NDCG@10, and the sequence and chat phases after it train from its weights."""
    from think_rec.data.split import history_exclusion, leave_one_out, sample_users
    from think_rec.finetune import align
    from think_rec.finetune.align_config import AlignConfig
    from think_rec.finetune.selection import ndcg_at_10, next_item_ndcg10
    from think_rec.finetune.sequence_data import build_sequence_dataset, item_stream_ids, item_token_ids, sid_stream
    from think_rec.model.loading import load_model

    dirs, codebook, model_dir = aligned_run
    model, processor = load_model(model_dir)
    rows = processor.tokenizer.convert_tokens_to_ids(codebook.item_tokens())
    ids = item_stream_ids(codebook, processor)
    assert ids == {item: [rows[n]] for n, item in enumerate(codebook.codes)}
    split = leave_one_out(synthetic_dataset.interactions, max_history=7)
    ds = build_sequence_dataset(split, ids, max_items=8)
    first = next(r for r in ds if len(r["input_ids"]) >= 3)
    assert first["completion_mask"] == [0] + [1] * (len(first["input_ids"]) - 1)
    assert set(first["input_ids"]) <= set(rows)

    config = AlignConfig(output_dir=str(tmp_path), model=str(dirs.tiny), data_dir=str(dirs.data),
                         sids_dir=str(dirs.sids), phase="items,sequence,multitask", task_mix={"sequential": 1.0},
                         with_images=False, max_history=5, sequence_max_items=8, item_head=True, item_inputs=True,
                         max_steps=30, num_examples=32, max_length=256, per_device_train_batch_size=8,
                         learning_rate=3e-3, prior_valid_users=0, save_steps=1000, logging_steps=1, disable_tqdm=True,
                         select_every_steps=10, select_users=24, lora_r=0, sequence_item_streams=True,
                         item_teacher=0.5,  # the later phases distil the items phase's model
                         phase_overrides={"sequence": {"max_steps": 2}, "multitask": {"max_steps": 2}})
    sid_rows = SIDTrie.from_codebook(codebook, processor).token_ids.tolist()
    trainer = align.SequenceTrainer(model=model, args=config.phase_args("items"), train_dataset=ds.select(range(4)),
                                    processing_class=processor, label_groups=[(sid_rows, 0), (rows, 0)])
    row = first["input_ids"] + sid_stream(list(codebook.codes)[:3], item_token_ids(codebook, processor.tokenizer))
    batch = trainer.data_collator([{"input_ids": row, "labels": [-100] + row[1:]}])
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        hidden = model(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states[-1][0, :-1]
    weight, total = model.get_output_embeddings().weight, 0.0  # each label over its own group's rows
    for h, label in zip(hidden, row[1:]):
        group = rows if label in rows else sorted(sid_rows)
        total += F.cross_entropy((h @ weight[group].T).float(), torch.tensor(group.index(label)), reduction="sum")
    torch.testing.assert_close(loss, total / (len(row) - 1), rtol=1e-4, atol=1e-4)
    assert sum(label in rows for label in row[1:]) == len(first["input_ids"]) - 1
    trainer.label_groups = trainer.label_groups[1:]  # a SID label in no group: a clear error, not a wrong column
    with pytest.raises(ValueError, match="in no label group"), torch.no_grad():
        trainer.compute_loss(model, batch)

    final = align.train_align(config)
    logs = [e["loss"] for e in json.loads((tmp_path / "items" / "log_history.json").read_text()) if "loss" in e]
    assert len(logs) == 30 and all(torch.isfinite(torch.tensor(logs)))
    assert sum(logs[-5:]) < sum(logs[:5])  # the item softmax is learnt
    assert (tmp_path / "sequence" / "log_history.json").exists() and (final / "config.json").exists()

    log = json.loads((tmp_path / "items" / "selection.json").read_text())
    assert [e["step"] for e in log["evaluations"]] == [10, 20, 30]
    assert log["best_valid_ndcg@10"] == max(e["valid_ndcg@10"] for e in log["evaluations"])
    valid = sample_users(leave_one_out(synthetic_dataset.interactions, max_history=7).valid, 24)
    exclude = history_exclusion(split)
    warm, _ = load_model(tmp_path / "items" / "merged")  # the items phase's output: its best weights
    token = {item: i[0] for item, i in ids.items()}
    ranked = []  # by hand, one unpadded stream at a time
    with torch.no_grad():
        for history in valid["history"]:
            scores = warm(input_ids=torch.tensor([sid_stream(history, ids)])).logits[0, -1]
            ranked.append(sorted((i for i in codebook.codes if not (exclude and i in history)),
                                 key=lambda i: -scores[token[i]].item())[:10])
    by_hand = ndcg_at_10(ranked, valid["target"])

    def batched(size: int) -> float:
        return next_item_ndcg10(warm, token, lambda h: sid_stream(h[-7:], ids), valid["history"], valid["target"],
                                exclude_history=exclude, batch_size=size)

    assert batched(5) == pytest.approx(by_hand, abs=1e-6)  # left padding changes nothing
    # the kept weights are the best evaluation's (the saved model may swap a few near-tied items: within 0.01)
    assert batched(128) == pytest.approx(log["best_valid_ndcg@10"], abs=0.01), log
    config.sequence_item_streams = False
    sids = align.stream_dataset(config, "sequence", split, codebook, processor, rows)
    config.sequence_item_streams = True
    mixed = align.stream_dataset(config, "sequence", split, codebook, processor, rows)
    assert list(mixed["input_ids"]) == list(sids["input_ids"]) + list(ds["input_ids"])  # SID streams, then item streams
    for phase in ("items", "sequence"):  # both stream phases cut their windows by it: a change starts them over
        assert align.phase_fingerprint(config, phase, dirs.tiny, "d", "s")["config"]["sequence_max_items"] == 8
    with pytest.raises(ValueError, match="phase items needs item_head"):
        AlignConfig(output_dir=str(tmp_path), phase="items,sequence")
    with pytest.raises(ValueError, match="sequence_item_streams: true needs item_head"):
        AlignConfig(output_dir=str(tmp_path), phase="sequence", sequence_item_streams=True)


def test_item_teacher_softens_the_item_streams_of_the_sequence_phase(aligned_run, tmp_path):
    """``item_teacher`` on the item streams: each item label's target is (1 - share) its one-hot plus share the
    teacher's softmax over the item tokens at the same position; SID labels stay hard, in the same softmax over both
    kinds."""
    from think_rec.finetune import align
    from think_rec.finetune.align_config import AlignConfig
    from think_rec.finetune.sequence_data import item_stream_ids, item_token_ids, sid_stream
    from think_rec.model.loading import load_model

    dirs, codebook, model_dir = aligned_run
    model, processor = load_model(model_dir)
    teacher, _ = load_model(model_dir)
    rows = processor.tokenizer.convert_tokens_to_ids(codebook.item_tokens())
    with torch.no_grad():  # a teacher unlike the student
        teacher.get_output_embeddings().weight[rows] += torch.randn_like(teacher.get_output_embeddings().weight[rows])
    sid_rows = SIDTrie.from_codebook(codebook, processor).token_ids.tolist()
    items = list(codebook.codes)[:4]
    row = sid_stream(items, item_stream_ids(codebook, processor)) + sid_stream(
        items[:2], item_token_ids(codebook, processor.tokenizer))
    config = AlignConfig(output_dir=str(tmp_path), phase="sequence", max_length=256)
    rows_ds = datasets.Dataset.from_list([{"input_ids": row, "completion_mask": [0] + [1] * (len(row) - 1)}])
    trainer = align.SequenceTrainer(model=model, args=config.phase_args("sequence"), train_dataset=rows_ds,
                                    processing_class=processor, label_groups=[(sid_rows + rows, 0)],
                                    item_teacher=(teacher, rows, 0.25))
    batch = trainer.data_collator([{"input_ids": row, "labels": [-100] + row[1:]}])
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        hidden = model(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states[-1][0, :-1]
        taught = teacher(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states[-1][0, :-1]
    group, item_rows = sorted(sid_rows + rows), sorted(rows)
    total = 0.0
    for h, t, label in zip(hidden, taught, row[1:]):
        logp = (h @ model.get_output_embeddings().weight[group].T).float().log_softmax(-1)
        hard = -logp[group.index(label)]
        if label in rows:
            probs = (t @ teacher.get_output_embeddings().weight[item_rows].T).float().softmax(-1)
            hard = 0.75 * hard - 0.25 * (probs * logp[[group.index(r) for r in item_rows]]).sum()
        total += hard
    torch.testing.assert_close(loss, total / (len(row) - 1), rtol=1e-4, atol=1e-4)
    trainer.item_teacher = None  # without the teacher: the hard labels alone, another loss
    with torch.no_grad():
        assert not torch.allclose(trainer.compute_loss(model, batch), loss)

    with pytest.raises(ValueError, match="needs the items phase first"):
        AlignConfig(output_dir="out", phase="sequence", item_head=True, item_teacher=0.5)
    with pytest.raises(ValueError, match="sampled_item_negatives: 0"):
        AlignConfig(output_dir="out", phase="items,sequence", item_head=True, item_teacher=0.5,
                    sampled_item_negatives=8)

"""Pruned context, rationale teachers and filters (OneRec-Think stage 2 data)."""
from __future__ import annotations

import json
import re
from collections import Counter

import datasets
import numpy as np
import pytest

from think_rec.finetune.pruned_context import prune_batch, prune_examples, prune_history
from think_rec.finetune.rationale_filters import (citation_title, complete, consistency, filter_rationale,
                                                  grounding, leakage, readability, rejection_sample)
from think_rec.finetune.rationales import (CallableTeacher, OpenAITeacher, RationaleRequest, TeacherError,
                                           TemplateTeacher, ask_teacher, make_teacher, teacher_prompt)
from think_rec.data.errors import DataError
from think_rec.data.schema import make_item
from think_rec.data.split import leave_one_out

# ---------------------------------------------------------------- pruned context


def test_prune_history_picks_most_similar_in_chronological_order():
    emb = np.array([[1, 0], [0, 1], [0.9, 0.1], [-1, 0], [0.7, 0.7], [1, 0.05]], dtype=np.float32)
    index = {f"i{n}": n for n in range(len(emb))}
    history = ["i4", "i1", "i2", "i3", "i0"]  # target i5 ~ (1, 0): closest i0, i2, then i4
    assert prune_history(history, "i5", emb, index, k=3) == ["i4", "i2", "i0"]
    assert prune_history(history, "i5", emb, index, k=1) == ["i0"]
    assert prune_history(history, "i5", emb, index, k=10) == history  # k above length keeps all
    assert prune_history(["i0", "i2", "i0"], "i5", emb, index, k=2) == ["i2", "i0"]  # repeat counts once


def test_prune_batch_matches_single_and_rejects_unknown_items(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((50, 8)).astype(np.float32)
    index = {str(i): i for i in range(50)}
    hists = [[str(j) for j in rng.choice(50, size=rng.integers(1, 20), replace=False)] for _ in range(30)]
    targets = [str(t) for t in rng.integers(0, 50, size=30)]
    batch = prune_batch(hists, targets, emb, index, k=4, batch_size=7, progress=False)
    assert batch == [prune_history(h, t, emb, index, k=4) for h, t in zip(hists, targets)]
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    h, t = hists[0], targets[0]
    sims = sorted((float(unit[int(i)] @ unit[int(t)]), i) for i in h)
    assert set(batch[0]) == {i for _, i in sims[-4:]}
    (tmp_path / "item_ids.json").write_text(json.dumps(list(index)))
    np.save(tmp_path / "item_embeddings.npy", emb)
    examples = datasets.Dataset.from_dict({"history": hists, "target": targets})
    assert prune_examples(examples, tmp_path, k=4, progress=False) == batch
    with pytest.raises(DataError, match="no embedding for item 'zz'"):
        prune_history(["0", "zz"], "1", emb, index)


# ---------------------------------------------------------------- template teacher + filters


def requests_from(dataset, n=None, k=10):
    loo = leave_one_out(dataset.interactions, max_history=k)
    rows = loo.test.to_list()[:n]
    cat = dataset.catalog
    return [RationaleRequest(r["user_id"], [cat[i] for i in r["history"]], cat[r["target"]]) for r in rows]


def check_template(reqs):
    texts = TemplateTeacher().generate(reqs)
    assert texts == TemplateTeacher().generate(reqs)  # deterministic
    for req, text in zip(reqs, texts):
        assert filter_rationale(text, req.target, req.history) == (True, "ok"), text
        rebought = any(h["title"] == req.target["title"] for h in req.history)  # ml-100k lists some films twice
        assert rebought or not re.search(rf"\b{re.escape(req.target['title'].lower())}\b", text.lower()), text
        quoted = re.findall(r'"([^"]+)"', text)
        assert quoted and set(quoted) <= {citation_title(h) for h in req.history}, text  # cites by title
        sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)
        assert 1 <= len(sentences) <= 5 and all(complete(s) for s in sentences), text
    return texts


def test_template_teacher_passes_filters_on_synthetic(synthetic_dataset):
    texts = check_template(requests_from(synthetic_dataset))
    assert any("the next item is in" in t for t in texts) and any("usually pay" in t for t in texts)


def test_template_teacher_passes_filters_on_movielens():
    from think_rec.data.loaders import load_source

    texts = check_template(requests_from(load_source("recbole", "ml-100k"), n=300))
    assert sum("film" in t for t in texts) > 250 and any("1990s" in t for t in texts)


def test_template_teacher_never_cites_a_title_containing_the_target():
    target = make_item("9", "Alien", categories=["Sci-Fi"], description="Released 1979")
    hist = [make_item("1", "Aliens", categories=["Sci-Fi"], description="Released 1986"),
            make_item("2", "Alien 3", categories=["Sci-Fi", "Thriller"], description="Released 1992")]
    text = TemplateTeacher().rationale(hist, target)
    assert not leakage(text, target, hist) and "Sci-Fi" in text and "Alien 3" not in text


def test_citing_a_rebought_product_is_not_leakage():
    target = make_item("9", "Acme Patty Paper, 5.5 x 5.5 (Pack of 1000).", categories=["Kitchen", "Paper"])
    other = make_item("2", "Acme Patty Paper Rack", categories=["Kitchen", "Racks"])
    rebought = make_item("1", "Acme Patty Paper, 5.5 x 5.5 (Pack of 1000).", categories=["Kitchen", "Paper"])
    text = 'They recently bought "Acme Patty Paper, 5.5 x 5.5 (Pack of 1000)".'
    assert leakage(text, target, [other])  # the title no history item has
    assert not leakage(text, target, [other, rebought])  # the same product bought before, under another id
    assert "Acme Patty Paper, 5.5 x 5.5" in TemplateTeacher().rationale([other, rebought], target)


def test_grounded_template_teacher_claims_only_what_a_cited_history_item_backs():
    target = make_item("9", "Acme torque wrench", brand="Acme", price=40.0,
                       categories=["Tools", "Hand Tools", "Wrenches"])
    hist = [make_item("1", "Acme drill bits", brand="Acme", price=20.0, categories=["Tools", "Power Tools", "Bits"]),
            make_item("2", "Brass hinge", brand="Hingeco", price=30.0, categories=["Home", "Hardware", "Hinges"])]
    full, grounded = TemplateTeacher().rationale(hist, target), TemplateTeacher(grounded=True).rationale(hist, target)
    assert "Hand Tools" in full and "pay" in full  # the target's category and price band, which no item shares
    assert grounded == 'It is made by Acme, like "Acme drill bits".'
    hist[1]["categories"] = ["Tools", "Hand Tools", "Pliers"]  # now a history item shares the category path
    assert 'Like "Brass hinge", the next item is in Hand Tools > Wrenches.' in TemplateTeacher(
        grounded=True).rationale(hist, target)
    assert make_teacher("template", grounded=True).grounded


def test_template_teacher_with_candidates_claims_only_what_one_of_them_carries():
    target = make_item("9", "Acme torque wrench", brand="Acme", price=40.0,
                       categories=["Tools", "Hand Tools", "Wrenches"])
    hist = [make_item("1", "Acme drill bits", brand="Acme", price=20.0, categories=["Tools", "Power Tools", "Bits"]),
            make_item("2", "Brass hinge", brand="Hingeco", price=30.0, categories=["Home", "Hardware", "Hinges"])]
    teacher = TemplateTeacher()
    full = teacher.rationale(hist, target)
    assert "Hand Tools > Wrenches" in full and "Acme" in full and "costs more" in full
    sockets = make_item("7", "Acme socket set", brand="Acme", price=35.0, categories=["Tools", "Power Tools"])
    assert teacher.rationale(hist, target, [sockets]) == 'It is made by Acme, like "Acme drill bits".'
    wrench = make_item("8", "Steel wrench", brand="Steelco", price=45.0, categories=["Tools", "Hand Tools", "Wrenches"])
    text = teacher.rationale(hist, target, [wrench])
    assert "Hand Tools > Wrenches" in text and "costs more" in text and "made by" not in text
    assert '"Acme drill bits"' in text  # no claim sentence cites an item: the closest ones are cited instead
    assert teacher.generate([RationaleRequest("u", hist, target, [sockets])]) == [
        'It is made by Acme, like "Acme drill bits".']


FILM = make_item("5", "Star Wars: The Empire Strikes Back", categories=["Action", "Sci-Fi"],
                 description="Released 1980")
HIST = [make_item("1", "Star Wars", categories=["Action", "Sci-Fi"]),
        make_item("2", "Blade Runner", categories=["Sci-Fi"]),
        make_item("3", "Silence of the Lambs, The", categories=["Thriller"])]


@pytest.mark.parametrize("text,reason", [
    ("They loved Star Wars, so star wars: the empire strikes back is next.", "leakage"),
    ("After Blade Runner, The Empire Strikes Back is natural.", "leakage"),  # distinctive 4-gram
    ("They like long films with good music.", "ungrounded"),
    ("Their taste runs to Sci-Fi.", "ungrounded"),  # a shared genre alone cites no item
    ("They watched Star Wars and Blade Runner, so more", "incomplete"),
    ("They watched Star Wars and Blade Runner, so more space adventure fits", "incomplete"),
    ("   ", "empty"),
    ("They watched Star Wars and Blade Runner, so more space adventure fits.", "ok"),
    ('Like "Blade Runner", it is Sci-Fi!', "ok"),
    ("They enjoyed The Silence of the Lambs.", "ok"),  # MovieLens ', The' title, reordered
])
def test_filter_rationale(text, reason):
    assert filter_rationale(text, FILM, HIST) == (reason == "ok", reason)


def test_completeness_and_readability():
    assert complete('They bought "Star Wars".') and complete("Why not?") and complete("Great!)")
    assert not complete("It costs $12") and not complete("") and not complete("e.g")
    plain, dense = "They like films. They watch a lot.", "Incomprehensibility characterises institutionalisation."
    assert readability(plain) > 80 > readability(dense) and readability("") == 0.0


def test_grounding_and_consistency():
    assert grounding("More from the Blade saga", HIST) is False
    assert grounding("the star wars films", HIST) is True
    assert grounding("They like Thrillers", HIST) is False and grounding("a Thriller fan", HIST) is True
    assert grounding("a Thriller fan", HIST, target=FILM) is False  # not shared with the target
    recs = [make_item("a", "X", brand="Acme", categories=["Toys"]), make_item("b", "Y", categories=["Sci-Fi"]),
            make_item("c", "Z", categories=["Garden"])]
    assert consistency("Acme toys and sci-fi", recs) == pytest.approx(2 / 3)
    assert consistency("anything", []) == 0.0


def test_rejection_sample_with_fake_ranker():
    reqs = [RationaleRequest("u", HIST, FILM)] * 4
    texts = ["Star Wars fans want more Sci-Fi.",  # kept: ranker puts the target first
             "More Sci-Fi after Blade Runner.",  # ranker buries the target
             "star wars: the empire strikes back",  # leakage
             "nothing in common."]  # ungrounded

    def rank(ex, text):
        return ["5", "1"] if text.startswith("Star Wars") else ["1", "2", "5"]

    kept, stats = rejection_sample(reqs, texts, rank, top_n=2, progress=False)
    assert kept == [texts[0], "", "", ""]
    assert stats == {"accepted": 1, "rejected_leakage": 1, "rejected_incomplete": 0, "rejected_ungrounded": 1,
                     "rejected_rank": 1, "acceptance_rate": 0.25}
    kept, stats = rejection_sample(reqs, texts, None, progress=False)
    assert kept[:2] == texts[:2] and stats["accepted"] == 2


# ---------------------------------------------------------------- OpenAI-compatible teacher


@pytest.fixture
def fake_requests():
    return [RationaleRequest(str(u), [make_item(str(i), f"Item number {i}") for i in range(u, u + 3)],
                             make_item("t", "Target")) for u in range(8)]


def test_openai_teacher_concurrency_and_cache(tmp_path, fake_requests, fake_openai):
    server = fake_openai()
    teacher = OpenAITeacher(server.url, "fake", concurrency=4, cache_dir=tmp_path)
    texts = teacher.generate(fake_requests)
    assert server.calls == 8 and server.peak >= 2  # requests overlapped
    assert texts[0].startswith("Because of ") and "<think>" not in texts[0]
    assert texts[0] != texts[1]  # each answer went back to its own request
    again = OpenAITeacher(server.url, "fake", cache_dir=tmp_path).generate(fake_requests)
    assert again == texts and server.calls == 8  # second run: zero requests
    OpenAITeacher(server.url, "other-model", cache_dir=tmp_path).generate(fake_requests[:1])
    assert server.calls == 9  # the model is part of the cache key


def test_openai_cache_is_keyed_by_endpoint_and_opened_with_wal(tmp_path, fake_requests, fake_openai):
    first, second = fake_openai(delay=0.0), fake_openai(delay=0.0)
    teacher = OpenAITeacher(first.url, "fake", cache_dir=tmp_path)
    teacher.generate(fake_requests[:2])
    OpenAITeacher(second.url, "fake", cache_dir=tmp_path).generate(fake_requests[:2])
    assert first.calls == 2 and second.calls == 2  # another server is another teacher: no cache hit
    assert teacher.cache.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert teacher.cache.db.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_openai_teacher_retries_then_fails_without_caching(tmp_path, fake_requests, fake_openai):
    server = fake_openai(fail_first=2, delay=0.0)
    teacher = OpenAITeacher(server.url, "fake", concurrency=1, max_retries=3, cache_dir=tmp_path)
    assert teacher.generate(fake_requests[:1])[0].startswith("Because of ")
    assert server.calls == 3  # the openai client retried the two 500s
    failing = fake_openai(fail_first=100, delay=0.0)
    teacher = OpenAITeacher(failing.url, "fake", max_retries=1, cache_dir=tmp_path / "b")
    assert teacher.generate(fake_requests[:2]) == [None, None] and teacher.stats["failures"] == 2
    assert failing.calls == 4 and teacher.cache.db.execute("SELECT COUNT(*) FROM cache").fetchone()[0] == 0
    with pytest.raises(TeacherError, match="failed on 2 of 2 requests"):
        ask_teacher(teacher, fake_requests[:2], retries=1, backoff=0.0)
    assert teacher.cache.db.execute("SELECT COUNT(*) FROM cache").fetchone()[0] == 0


def test_ask_teacher_retries_failures_and_aborts_over_the_failure_rate(fake_requests):
    calls = Counter()

    def flaky(request):  # user 0 always fails, user 1 fails once
        calls[request.user_id] += 1
        if request.user_id == "0" or (request.user_id == "1" and calls["1"] == 1):
            raise ConnectionError("teacher down")
        return f"text {request.user_id}"

    teacher = make_teacher("self", fn=flaky, batched=False)
    out = ask_teacher(teacher, fake_requests, retries=2, backoff=0.0, max_failure_rate=0.2)
    assert out == [None] + [f"text {u}" for u in range(1, 8)] and calls["0"] == 3 and calls["1"] == 2
    with pytest.raises(TeacherError, match="failed on 1 of 8 requests"):
        ask_teacher(teacher, fake_requests, retries=1, backoff=0.0, max_failure_rate=0.1)

    def down(requests):
        raise TimeoutError("no route to teacher")

    with pytest.raises(TeacherError, match="failed on 8 of 8.*no route to teacher"):
        ask_teacher(make_teacher("self", fn=down), fake_requests, retries=1, backoff=0.0)


def test_api_key_is_only_read_from_the_environment(monkeypatch, fake_requests, fake_openai, tmp_path):
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        make_teacher("openai", base_url="http://localhost:1/v1", model="m", api_key="sk-secret")
    with pytest.raises(ValueError, match="THINK_REC_TEST_KEY is not set"):
        make_teacher("openai", base_url="http://localhost:1/v1", model="m", api_key_env="THINK_REC_TEST_KEY")
    monkeypatch.setenv("THINK_REC_TEST_KEY", "sk-from-env")
    server = fake_openai(delay=0.0)
    make_teacher("openai", base_url=server.url, model="m", api_key_env="THINK_REC_TEST_KEY",
                 cache_dir=tmp_path).generate(fake_requests[:1])
    assert server.auth == {"Bearer sk-from-env"}


def test_prompt_and_registry(fake_requests):
    prompt = teacher_prompt(RationaleRequest("u", HIST, FILM))
    assert prompt.startswith("A user interacted with these items: Star Wars (Action > Sci-Fi); ")
    assert "they then chose: Star Wars: The Empire Strikes Back (Action, Sci-Fi; Released 1980)" in prompt
    assert "without naming the chosen item" in prompt
    teacher = make_teacher("self", fn=lambda r: f"<think>{r.user_id}</think>", batched=False)
    assert isinstance(teacher, CallableTeacher) and teacher.generate(fake_requests[:2]) == ["0", "1"]
    assert isinstance(make_teacher("template"), TemplateTeacher)
    with pytest.raises(ValueError, match="unknown teacher 'gpt'"):
        make_teacher("gpt")
    with pytest.raises(ValueError, match="returned 1 rationales for 2"):
        make_teacher("self", fn=lambda rs: ["x"]).generate(fake_requests[:2])


@pytest.mark.slow
def test_smol_teacher_generates():
    from think_rec.finetune.rationales import SmolTeacher

    teacher = SmolTeacher(max_new_tokens=24)  # ~100 s to load on 2 busy cores
    texts = teacher.generate([RationaleRequest("u", HIST, FILM)] * 2)
    assert len(texts) == 2 and texts[0] == texts[1] and len(texts[0].split()) >= 3


@pytest.mark.slow
def test_openai_teacher_against_a_real_vllm_server(aligned_run, tmp_path, fake_requests, monkeypatch):
    """vLLM's own OpenAI server (CPU) with the tiny preset answers every teacher request; reruns hit the cache."""
    import sys

    from think_rec.serve.launch import free_port, launch, stop_server

    dirs, _, _ = aligned_run
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(dirs.tiny),
           "--served-model-name", "tiny", "--port", str(port), "--enforce-eager", "--max-model-len", "1024",
           "--limit-mm-per-prompt", '{"image": 0, "video": 0}']
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    proc = launch(cmd, f"http://127.0.0.1:{port}", tmp_path / "vllm.log", timeout_s=300)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        teacher = OpenAITeacher(url, "tiny", concurrency=4, temperature=1.0, max_tokens=24, max_retries=0,
                                cache_dir=tmp_path)  # sampled: greedy random weights may repeat one special token
        texts = teacher.generate(fake_requests)
        assert teacher.stats["failures"] == 0 and teacher.stats["requests"] == len(fake_requests)
        assert all(isinstance(t, str) for t in texts) and any(texts), texts  # random weights: words, not sense
        cached = [bool(t) for t in texts]
        again = OpenAITeacher(url, "tiny", temperature=1.0, max_tokens=24, cache_dir=tmp_path)
        replay = again.generate(fake_requests)
        assert again.stats["cache_hits"] == sum(cached)
        assert [r for r, hit in zip(replay, cached) if hit] == [t for t in texts if t]
    finally:
        stop_server(proc)

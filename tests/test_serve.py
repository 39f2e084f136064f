"""The served recommender end to end: one real ``think-rec serve`` (vLLM CPU engine, stage-1 tiny model)
per module, driven by the openai client, raw HTTP, the terminal client and headless Chromium."""
from __future__ import annotations

import shutil
import statistics

import httpx
import pytest

from think_rec.data.schema import RecDataset
from think_rec.finetune.rationale_filters import complete
from think_rec.serve.launch import start_server, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(aligned_run, tmp_path_factory):
    """``(base_url, dataset)`` of a running vLLM-backed server; stopped (engine included) after the module."""
    dirs, _, model_dir = aligned_run
    ds = RecDataset.load(dirs.data)
    log = tmp_path_factory.mktemp("serve") / "server.log"
    proc, url = start_server(model_dir, dirs.data, dirs.sids, "vllm", log, timeout_s=300)
    try:
        yield url, ds
    finally:
        stop_server(proc)


def _chat(url: str, **body) -> dict:
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _say(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_openai_client_gets_catalog_items(server, aligned_run):
    from openai import OpenAI

    url, ds = server
    codebook = aligned_run[1]
    client = OpenAI(base_url=url + "/v1", api_key="unused")
    model = client.models.list().data[0].id
    resp = client.chat.completions.create(model=model, messages=_say("What should I get next?"),
                                          extra_body={"user": "u0", "k": 5, "exclude_seen": True})
    rec = resp.model_extra["recommendation"]
    items = rec["items"]
    assert len(items) == 5 and len({it["id"] for it in items}) == 5
    history = set(dict(zip(ds.interactions.users, ds.interactions.sequences))["u0"])
    for it in items:
        assert it["id"] in ds.catalog and it["id"] not in history  # seen items are excluded
        assert it["sid"] == codebook.sid_string(it["id"]) and it["title"] == ds.catalog[it["id"]]["title"]
        assert it["title"] in resp.choices[0].message.content
        assert httpx.get(url + it["image"]).headers["content-type"] == "image/png"
    assert [it["score"] for it in items] == sorted((it["score"] for it in items), reverse=True)
    assert resp.choices[0].finish_reason == "stop" and resp.usage.prompt_tokens > 0


def test_stream_rationale_then_items(server):
    from openai import OpenAI

    url, ds = server
    client = OpenAI(base_url=url + "/v1", api_key="unused")
    model = client.models.list().data[0].id
    chunks = list(client.chat.completions.create(model=model, messages=_say("surprise me"), stream=True,
                                                 extra_body={"user": "u3", "k": 3, "think": True,
                                                             "max_think_tokens": 6}))
    final = chunks[-1].model_extra["recommendation"]
    deltas = [c.choices[0].delta.content or "" for c in chunks[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(deltas).strip() == final["rationale"]  # held back to sentence ends: the deltas add up to it
    assert final["rationale"] == "" or complete(final["rationale"])  # closed at its last sentence end, as on HF
    assert len(final["items"]) == 3 and all(it["id"] in ds.catalog for it in final["items"])
    assert all(it["title"] in chunks[-1].choices[0].delta.content for it in final["items"])


def test_steering_turns_honour_constraints(server):
    url, ds = server
    first = _chat(url, messages=_say("What next?"), user="u1", k=8)
    sid, items1 = first["session_id"], first["recommendation"]["items"]
    brand = items1[0]["brand"]  # the top pick's brand: excluding it must change the answer
    second = _chat(url, messages=_say("Something else, not from that brand."), session_id=sid, k=8)
    items2 = second["recommendation"]["items"]
    assert items2 and all(ds.catalog[it["id"]]["brand"] != brand for it in items2)
    assert not {it["id"] for it in items1} & {it["id"] for it in items2}  # shown items are not repeated
    assert second["recommendation"]["constraints"]["exclude_brands"] == [brand]
    ceiling = statistics.median(it["price"] for it in items2)  # "cheaper" = below the last median
    third = _chat(url, messages=_say("cheaper please"), session_id=sid, k=5)
    items3 = third["recommendation"]["items"]
    assert items3 and all(ds.catalog[it["id"]]["price"] < ceiling for it in items3)
    assert all(ds.catalog[it["id"]]["brand"] != brand for it in items3)  # earlier turns still hold
    category = ds.catalog[items3[0]["id"]]["categories"][0]
    fourth = _chat(url, messages=_say(f"no {category} at all"), session_id=sid, k=5)
    assert all(category not in ds.catalog[it["id"]]["categories"] for it in fourth["recommendation"]["items"])
    # stateless (no session): every user message in the request is parsed
    other = next(b for b in {ds.catalog[i]["brand"] for i in ds.catalog.ids} if b != brand)
    one_shot = _chat(url, messages=_say(f"nothing by {other}") + [{"role": "assistant", "content": "ok"}]
                     + _say(f"and no {brand}"), history=["0", "1"], k=10)
    assert not {other, brand} & {ds.catalog[it["id"]]["brand"] for it in one_shot["recommendation"]["items"]}


@pytest.mark.parametrize("body, status, needle", [
    ('{"messages": [{"role": "user", "content": "hi"}', 400, "not valid JSON"),
    ({"messages": []}, 400, "messages"),
    ({"messages": _say("   ")}, 400, "non-empty user message"),
    ({"messages": _say("x" * 5000)}, 400, "limit is 4000"),
    ({"messages": _say("hi"), "user": "no-such-user"}, 400, "unknown user id"),
    ({"messages": _say("hi"), "history": ["0", "nope"]}, 400, "unknown item ids"),
    ({"messages": _say("hi"), "n": 3}, 400, "n:"),
    ({"messages": _say("hi"), "k": 1000}, 400, "k:"),
    ({"messages": _say("hi"), "max_think_tokens": -1}, 400, "max_think_tokens"),
    ({"messages": _say("hi"), "model": "gpt-4"}, 404, "does not exist"),
])
def test_malformed_requests_get_4xx(server, body, status, needle):
    url, _ = server
    kw = {"content": body} if isinstance(body, str) else {"json": body}
    r = httpx.post(url + "/v1/chat/completions", headers={"content-type": "application/json"}, timeout=30, **kw)
    assert r.status_code == status and needle in r.json()["error"]["message"], r.text
    good = _chat(url, messages=_say("hi"), user="u2", k=2)  # the engine is still serving
    assert len(good["recommendation"]["items"]) == 2


def test_unsatisfiable_constraints_answer_without_items(server):
    url, _ = server
    out = _chat(url, messages=_say("under $0.01"), user="u4", k=3)
    assert out["recommendation"]["items"] == [] and "No catalog item" in out["choices"][0]["message"]["content"]


def test_terminal_chat_client(server):
    from think_rec.serve.client import chat_loop

    url, ds = server
    said = iter(["what next?", "not from that brand", "quit"])
    written: list[str] = []
    chat_loop(url, user="u5", k=3, read=lambda _: next(said), write=written.append)
    assert len(written) == 2 and all(line.startswith("rec> ") for line in written)
    titles = {ds.catalog[i]["title"] for i in ds.catalog.ids}
    assert sum(t in written[0] for t in titles) >= 3


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian chromium + chromium-driver (scripts/install.sh)")
def test_chat_page_in_headless_chromium(server, chrome):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, ds = server
    driver = chrome()
    driver.get(url + "/")
    driver.find_element(By.ID, "user").send_keys("u6")
    driver.find_element(By.ID, "text").send_keys("What should I buy next?", Keys.RETURN)
    cards = WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".item-card"))
    titles = [c.find_element(By.CLASS_NAME, "title").text for c in cards]
    assert len(titles) == 8 and all(t == ds.catalog[c.get_attribute("data-item-id")]["title"]
                                    for t, c in zip(titles, cards))
    loaded = "const i = document.querySelector('.item-card img'); return i.complete && i.naturalWidth"
    assert WebDriverWait(driver, 20).until(lambda d: d.execute_script(loaded)) > 0  # the image arrives
    brand = ds.catalog[cards[0].get_attribute("data-item-id")]["brand"]
    driver.find_element(By.ID, "text").send_keys("not from that brand", Keys.RETURN)
    WebDriverWait(driver, 60).until(lambda d: "not by" in d.find_element(By.ID, "constraints").text)
    ids = [c.get_attribute("data-item-id") for c in driver.find_elements(By.CSS_SELECTOR, ".item-card")]
    assert ids and all(ds.catalog[i]["brand"] != brand for i in ids)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#conversation .msg.user")) == 2

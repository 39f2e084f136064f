"""Explanations on a served stage-2 model: every steering clause answered as applied, ignored (with its reason)
or preference; constraints removed by label; the history used and the history items the rationale cites; and
the chat page in headless Chromium (history panel, highlighted citation, constraint chips, screenshot)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from think_rec.data.schema import Catalog, RecDataset
from think_rec.decoding.claims import ClaimChecker
from think_rec.serve.launch import start_server, stop_server
from think_rec.finetune.rationale_filters import title_mentioned

pytestmark = pytest.mark.slow
# the README's screenshot, rewritten only when asked (a test run leaves the checkout as it found it)
SCREENSHOT = Path(__file__).resolve().parents[1] / "eval" / "results" / "chat_page.png"
UPDATE_SCREENSHOT = os.environ.get("THINK_REC_UPDATE_SCREENSHOT") == "1"
ASK = "Something fun please, and no {category}"


@pytest.fixture(scope="module")
def reason_model(aligned_run, tmp_path_factory) -> Path:
    """A stage-2 model: the stage-1 model fully fine-tuned on `template` teacher rationales (they name history
    titles), long enough to write them back."""
    from think_rec.finetune.reason import train_reason
    from think_rec.finetune.reason_config import ReasonConfig

    dirs, _, model_dir = aligned_run
    out = tmp_path_factory.mktemp("reason")
    return Path(train_reason(ReasonConfig(
        output_dir=str(out), model=str(model_dir), data_dir=str(dirs.data), sids_dir=str(dirs.sids), num_examples=200,
        max_history=5, rejection_top_n=0, lora_r=0, per_device_train_batch_size=16, max_steps=300, save_steps=10_000,
        learning_rate=3e-3, lr_scheduler_type="constant", disable_tqdm=True)))


@pytest.fixture(scope="module")
def server(aligned_run, reason_model, tmp_path_factory):
    """``(base_url, dataset)`` of ``think-rec serve --backend hf --think`` on the stage-2 model, served as
    ``reason_tiny.yaml`` serves it: 8 rationales per request, the page shows the one ``ClaimChecker.choose`` picks."""
    from think_rec.model.artefacts import ServedConfig

    dirs = aligned_run[0]
    root = tmp_path_factory.mktemp("serve")
    model = root / "model"
    shutil.copytree(reason_model, model)
    served = ServedConfig.load(model)
    served.rationale_samples = 8
    served.save(model)
    proc, url = start_server(model, dirs.data, dirs.sids, "hf", root / "server.log", timeout_s=300,
                             extra_args=["--think"])
    try:
        yield url, RecDataset.load(dirs.data)
    finally:
        stop_server(proc)


def _chat(url: str, status: int = 200, **body) -> dict:
    r = httpx.post(url + "/v1/chat/completions", json={"max_think_tokens": 48, **body}, timeout=120)
    assert r.status_code == status, r.text
    return r.json()


def _say(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_cheaper_without_prices_is_answered_with_its_reason(aligned_run, reason_model, tmp_path):
    """A catalog without prices (as MovieLens): "cheaper" is ignored and says why; the rest still applies."""
    from fastapi.testclient import TestClient

    from think_rec.serve.api import RecService, ServeConfig, create_app

    dirs = aligned_run[0]
    ds = RecDataset.load(dirs.data)
    ds.catalog = Catalog.from_rows([{**row, "price": None} for row in ds.catalog.items.to_list()])
    ds.save(tmp_path / "data")
    service = RecService(ServeConfig(reason_model, tmp_path / "data", dirs.sids, backend="hf",
                                     session_db=tmp_path / "sessions.sqlite"))
    with TestClient(create_app(service)) as client:
        category = ds.catalog[ds.catalog.ids[0]]["categories"][-1]
        r = client.post("/v1/chat/completions", json={"messages": _say(f"cheaper, and no {category}"), "user": "u0",
                                                      "k": 4})
    assert r.status_code == 200, r.text
    out = r.json()
    rec, text = out["recommendation"], out["choices"][0]["message"]["content"]
    assert rec["clauses"] == [
        {"clause": "cheaper", "status": "ignored", "reason": "this catalog has no prices", "constraint": None},
        {"clause": f"no {category}", "status": "applied", "reason": None, "constraint": f"no {category}"}]
    assert 'Ignored "cheaper": this catalog has no prices.' in text and f'Applied "no {category}"' in text
    assert rec["active"] == [f"no {category}"] and rec["constraints"]["max_price"] is None
    assert rec["items"] and all(category not in ds.catalog[it["id"]]["categories"] for it in rec["items"])


def test_api_shows_the_rationale_the_eval_chooses_of_several(aligned_run, reason_model, tmp_path):
    """Served with three rationales per request (the greedy one and two draws) and a follow weight: the API's
    rationale and items are those ``bench reason`` scores (``eval.reasoning``: the draws, ``ClaimChecker.choose``,
    ``shorten``) for the same users."""
    from fastapi.testclient import TestClient

    from think_rec.data.split import leave_one_out, sample_users
    from think_rec.eval.reasoning import followed, think_results
    from think_rec.model.artefacts import RecModel, ServedConfig
    from think_rec.serve.api import RecService, ServeConfig, create_app

    dirs, codebook, _ = aligned_run
    model = tmp_path / "model"
    shutil.copytree(reason_model, model)
    served = ServedConfig.load(model)
    served.rationale_samples, served.follow_weight = 3, 1.0
    served.save(model)
    rec = RecModel.load(model, codebook, dirs.data)
    users = sample_users(leave_one_out(rec.dataset.interactions, max_history=served.max_history).test, 8)
    raw, histories = think_results(rec, users, k=max(10, served.num_beams), max_think_tokens=48, progress=False)
    assert all(len(r.rationales) == 3 for r in raw)
    checker = ClaimChecker(rec.items)
    expected = followed(raw, histories, checker, served.follow_weight, 10)
    service = RecService(ServeConfig(model, dirs.data, dirs.sids, backend="hf", session_db=tmp_path / "s.sqlite"))
    with TestClient(create_app(service)) as client:
        for history, want in zip(histories, expected):
            r = client.post("/v1/chat/completions", json={"messages": _say(""), "history": history, "k": 10,
                                                          "think": True, "max_think_tokens": 48})
            assert r.status_code == 200, r.text
            got = r.json()["recommendation"]
            assert [it["id"] for it in got["items"]] == [i for i, _ in want.items]
            assert got["rationale"] == checker.shorten(want.rationales[0], history, want.items[0][0])


def test_clauses_history_and_citations(server, reason_model):
    from think_rec.model.artefacts import ServedConfig

    url, ds = server
    first = _chat(url, messages=_say("What next?"), user="u1", k=4)
    brand = first["recommendation"]["items"][0]["brand"]
    second = _chat(url, messages=_say("something for a rainy day, not from that brand"),
                   session_id=first["session_id"], k=4)
    rec, text = second["recommendation"], second["choices"][0]["message"]["content"]
    assert [(c["clause"], c["status"], c["constraint"]) for c in rec["clauses"]] == [
        ("something for a rainy day", "preference", None), ("not from that brand", "applied", f"not by {brand}")]
    assert 'Taken as a preference, not a rule: "something for a rainy day".' in text
    assert f'Applied "not from that brand": not by {brand}.' in text
    assert all(it["brand"] != brand for it in rec["items"]) and rec["active"] == [f"not by {brand}"]
    max_history = ServedConfig.load(reason_model).max_history  # stage 2 inherits stage 1's served.json
    history = dict(zip(ds.interactions.users, ds.interactions.sequences))["u1"][-max_history:]
    assert [h["id"] for h in rec["history"]] == list(dict.fromkeys(reversed(history)))  # most recent first
    assert all(h["title"] == ds.catalog[h["id"]]["title"] and h["image"] for h in rec["history"])
    assert rec["cited"] == [h["id"] for h in rec["history"] if title_mentioned(rec["rationale"], h["title"])]


def test_remove_constraints(server):
    url, ds = server
    category = ds.catalog[ds.catalog.ids[0]]["categories"][-1]
    first = _chat(url, messages=_say(f"no {category}, under $1000"), user="u2", k=3)
    assert first["recommendation"]["active"] == [f"no {category}", "under $1000.00"]
    sid = first["session_id"]
    bad = _chat(url, 400, messages=_say(""), session_id=sid, remove_constraints=["not by Nobody"])
    assert "no active constraint 'not by Nobody'" in bad["error"]["message"]
    _chat(url, 400, messages=_say(""), session_id=sid)  # an empty turn must remove something
    second = _chat(url, messages=_say(""), session_id=sid, k=3, remove_constraints=[f"no {category}"])
    rec = second["recommendation"]
    assert rec["active"] == ["under $1000.00"] and rec["constraints"]["exclude_categories"] == []
    assert rec["clauses"] == [{"clause": f"no {category}", "status": "removed", "reason": "dropped at your request",
                               "constraint": None}]
    assert f'Removed "no {category}": dropped at your request.' in second["choices"][0]["message"]["content"]


def _answers(url: str, ds: RecDataset, category: str) -> list[tuple[str, dict]]:
    """The first 40 users' answers to ``ASK``, asked as the page asks (the page's turn, with the same request,
    answers the same)."""
    return [(user, _chat(url, messages=_say(ASK.format(category=category)), user=user, k=8,
                         max_think_tokens=64)["recommendation"]) for user in ds.interactions.users[:40]]


def _page(chrome, url: str, user: str, text: str):
    """A chat page on which ``user`` has said ``text``: its answer and history images shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chrome(1400)
    driver.get(url + "/")
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "text").send_keys(text, Keys.RETURN)
    WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".item-card"))
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#user-history img')].every((i) => i.complete && i.naturalWidth)"))
    return driver


def _assert_citations(driver, ds: RecDataset, expected: dict) -> None:
    """The history panel is the answer's history, the rationale marks cited titles, and the cited cards are lit."""
    from selenium.webdriver.common.by import By

    past = driver.find_elements(By.CSS_SELECTOR, "#user-history .history-card")
    assert [c.get_attribute("data-item-id") for c in past] == [h["id"] for h in expected["history"]]
    marks = driver.find_elements(By.CSS_SELECTOR, "#rationale mark.cited")
    assert bool(marks) == bool(expected["cited"]) and {m.get_attribute("data-item-id") for m in marks} <= set(
        expected["cited"])
    for m in marks:
        assert title_mentioned(m.text, ds.catalog[m.get_attribute("data-item-id")]["title"])
    cited_cards = driver.find_elements(By.CSS_SELECTOR, "#user-history .history-card.cited")
    assert {c.get_attribute("data-item-id") for c in cited_cards} == set(expected["cited"])


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian chromium + chromium-driver (scripts/install.sh)")
def test_chat_page_shows_history_citations_and_chips(server, chrome, tmp_path):
    """The page for a user whose shown rationale claims a category (one that also cites a history item when
    any of the first 40 does both; which users do depends on the tiny model's training): history, citations,
    the claim held by the top item, chips, the screenshot; then, if that rationale cited nothing, the citations
    on the page of a user whose rationale does."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, ds = server
    category = ds.catalog[ds.catalog.ids[0]]["categories"][-1]
    checker = ClaimChecker(ds.catalog.by_id)
    answers = _answers(url, ds, category)
    claiming = [(u, rec) for u, rec in answers
                if checker.claims(rec["rationale"], [h["id"] for h in rec["history"]]).categories]
    citing = [(u, rec) for u, rec in answers if rec["cited"]]
    assert claiming and citing, "\n".join(f"{u}: {rec['rationale']!r}" for u, rec in answers)
    user, expected = next(((u, rec) for u, rec in claiming if rec["cited"]), claiming[0])
    driver = _page(chrome, url, user, ASK.format(category=category))
    _assert_citations(driver, ds, expected)
    shown = driver.find_element(By.ID, "rationale").text  # the top item satisfies the rationale's category claim
    assert driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text.startswith(shown)  # the final one
    claims = checker.claims(shown, [h["id"] for h in expected["history"]])
    top = {c.casefold() for c in ds.catalog[expected["items"][0]["id"]]["categories"]}
    assert claims.categories and {c.casefold() for c in claims.categories} <= top and not claims.contradictions
    chips = driver.find_elements(By.CSS_SELECTOR, "#constraints .chip")
    assert [c.get_attribute("data-constraint") for c in chips] == [f"no {category}"]
    ids = [c.get_attribute("data-item-id") for c in driver.find_elements(By.CSS_SELECTOR, ".item-card")]
    assert ids == [it["id"] for it in expected["items"]]
    meta = driver.find_element(By.CSS_SELECTOR, ".item-card .meta").text
    assert ds.catalog[ids[0]]["brand"] in meta and f"${ds.catalog[ids[0]]['price']:.2f}" in meta
    shot = SCREENSHOT if UPDATE_SCREENSHOT else tmp_path / SCREENSHOT.name
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
    chips[0].find_element(By.TAG_NAME, "button").click()  # removing the chip drops the constraint
    WebDriverWait(driver, 120).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#constraints .chip")
                                     and len(d.find_elements(By.CSS_SELECTOR, "#conversation .msg.user")) == 2)
    WebDriverWait(driver, 120).until(lambda d: "Removed" in d.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text)
    if not expected["cited"]:
        user, expected = citing[0]
        _assert_citations(_page(chrome, url, user, ASK.format(category=category)), ds, expected)

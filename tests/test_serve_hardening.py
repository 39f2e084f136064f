"""The API's guards, in process (FastAPI ``TestClient``, transformers engine on the stage-1 ``aligned_run``
model): image paths, the API key, request caps, saturation and timeouts, sessions that survive a failing
turn and a restart, generic 5xx bodies with request ids."""
from __future__ import annotations

import asyncio
import os
import threading

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from think_rec.data.schema import RecDataset
from think_rec.serve.api import RecService, ServeConfig, create_app, serve
from think_rec.serve.engine import EngineBusy, EngineConfig
from think_rec.serve.engines import build_engine
from think_rec.serve.images import served_image

KEY = "s3cret-key"


class Flaky:
    """The started hf engine, with failures, delays or a full queue on demand."""

    name = "hf"

    def __init__(self, engine):
        self.engine, self.error, self.delay_s = engine, None, 0.0

    async def start(self) -> None:
        pass

    def healthy(self) -> bool:
        return True

    def shutdown(self) -> None:
        pass

    async def stream(self, prompt, **kw):
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        async for event in self.engine.stream(prompt, **kw):
            yield event


@pytest.fixture(scope="module")
def data_dir(aligned_run, tmp_path_factory):
    """The run's dataset re-saved (its images copied in), then items' image files swapped for ways out of the
    data folder, which ``RecDataset.load`` cannot see: ``1`` a link to /etc/passwd, ``2`` a relative ``../``
    link to it, ``3`` a link to a PNG outside, ``4`` a missing file; ``0`` stays a real PNG."""
    dirs, _, _ = aligned_run
    ds = RecDataset.load(dirs.data)
    outside = ds.catalog.items["image"][4]
    out = tmp_path_factory.mktemp("hardened") / "data"
    ds.save(out)
    stored = RecDataset.load(out).catalog.items["image"]
    for i, target in [(1, "/etc/passwd"), (2, "../../../../../../../../etc/passwd"), (3, outside), (4, None)]:
        os.remove(stored[i])
        if target:
            os.symlink(target, stored[i])
    return out


def test_served_image_refuses_paths_out_of_the_root(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "images" / "a.png")
    assert served_image(tmp_path, "images/a.png") == ((tmp_path / "images" / "a.png").resolve(), "image/png")
    for bad in ("/etc/passwd", "../a.png", "images/../../a.png", "http://x/a.png", "images/b.png", None, ""):
        assert served_image(tmp_path, bad) is None, bad


@pytest.fixture(scope="module")
def engine(aligned_run):
    dirs, _, model_dir = aligned_run
    hf = build_engine("hf", EngineConfig(model_dir, dirs.sids))
    asyncio.run(hf.start())
    return hf


@pytest.fixture
def make_client(aligned_run, data_dir, engine, tmp_path):
    """``make_client(**config) -> (client, flaky)``; every client of a test shares one session database."""
    dirs, _, model_dir = aligned_run
    opened = []

    def make(**config):
        config = {"session_db": tmp_path / "sessions.sqlite", **config}
        flaky = Flaky(engine)
        service = RecService(ServeConfig(model_dir, data_dir, dirs.sids, backend="hf", **config), engine=flaky)
        client = TestClient(create_app(service), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client, flaky, service
    yield make
    for c in opened:
        c.__exit__(None, None, None)


def _say(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _chat(client, status=200, **body) -> dict:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    return r.json()


def test_image_route_serves_only_images_under_the_data_folder(make_client):
    client, _, _ = make_client()
    ok = client.get("/v1/items/0/image")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png" and ok.content[:4] == b"\x89PNG"
    for item in ("1", "2", "3", "4", "no-such-item"):
        r = client.get(f"/v1/items/{item}/image")
        assert r.status_code == 404 and "root:" not in r.text, (item, r.text)
    assert client.get("/v1/items/..%2F..%2Fetc%2Fpasswd/image").status_code == 404
    items = _chat(client, messages=_say("hi"), history=["5", "6"], k=20)["recommendation"]["items"]
    assert all(it["image"] is None for it in items if it["id"] in {"1", "2", "3", "4"})


def test_api_key_enforced(make_client):
    client, _, _ = make_client(api_key=KEY)
    body = {"messages": _say("hi"), "history": ["0", "1"], "k": 2}
    assert client.get("/v1/models").status_code == 401
    r = client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    r = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and len(r.json()["recommendation"]["items"]) == 2
    assert client.get("/health").status_code == 200  # probes need no key
    with pytest.raises(ValueError, match="needs an API key"):
        serve(ServeConfig("m", "d", "s", host="0.0.0.0"))


@pytest.mark.parametrize("case", ["body", "chunked_body", "messages", "message_chars", "user_id", "item_id", "k",
                                  "prompt_tokens", "unknown_session"])
def test_oversized_requests_get_4xx_then_valid_works(make_client, case):
    client, _, _ = make_client(max_body_bytes=64 * 1024, max_model_len=1024)
    say = _say("hi")
    status, body = {
        "body": (413, {"messages": say, "history": ["0"] * 200, "pad": "x" * 70_000}),
        "messages": (400, {"messages": _say("hi") * 65}),
        "message_chars": (400, {"messages": _say("x" * 4001)}),
        "user_id": (400, {"messages": say, "user": "u" * 129}),
        "item_id": (400, {"messages": say, "history": ["0" * 129]}),
        "k": (400, {"messages": say, "k": 51}),
        "prompt_tokens": (400, {"messages": _say("blue widget " * 330)}),  # < 4000 chars, > 1024 tokens
        "unknown_session": (404, {"messages": say, "session_id": "chosen-by-the-client"}),
    }.get(case, (413, None))
    if body is None:  # no content-length: the body is counted as it arrives
        r = client.post("/v1/chat/completions", content=(b"x" * 1024 for _ in range(100)),
                        headers={"content-type": "application/json"})
    else:
        r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status and r.json()["error"]["message"], r.text
    assert len(_chat(client, messages=say, history=["0", "1"], k=2)["recommendation"]["items"]) == 2


def test_long_dialogue_is_trimmed_to_the_model(make_client):
    client, _, service = make_client(max_model_len=1024)
    text = "green gadget " * (350 // service.conversation.count("green gadget "))  # about 350 tokens
    sid = _chat(client, messages=_say(text), user="u0", k=2)["session_id"]
    for _ in range(4):  # each message fits alone, not all together: the oldest are dropped
        out = _chat(client, messages=_say(text), session_id=sid, k=2)
        assert 0 < out["usage"]["prompt_tokens"] <= 1024 and out["session_id"] == sid
    assert 1 <= len(service.sessions.get(sid).user_messages) < 5


def test_session_survives_a_failing_turn(make_client):
    client, flaky, service = make_client()
    first = _chat(client, messages=_say("What next?"), user="u1", k=4)
    sid, brand = first["session_id"], first["recommendation"]["items"][0]["brand"]
    flaky.error = RuntimeError("secret internal detail")
    r = client.post("/v1/chat/completions", json={"messages": _say(f"not from {brand}"), "session_id": sid},
                    headers={"X-Request-Id": "req-42"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "req-42"
    assert "secret" not in r.text and "req-42" in r.json()["error"]["message"]
    stream = client.post("/v1/chat/completions", json={"messages": _say("more"), "session_id": sid, "stream": True})
    assert stream.status_code == 200 and "internal server error" in stream.text and "secret" not in stream.text
    flaky.error = EngineBusy("queue full")
    assert client.post("/v1/chat/completions", json={"messages": _say("x"), "session_id": sid}).status_code == 503
    flaky.error = None
    again = _chat(client, messages=_say("something else"), session_id=sid, k=4)
    assert again["recommendation"]["constraints"]["exclude_brands"] == []  # the failed turns left no trace
    shown = {it["id"] for it in first["recommendation"]["items"]}
    assert not shown & {it["id"] for it in again["recommendation"]["items"]}
    assert service.sessions.get(sid).user_messages == ["What next?", "something else"]


def test_saturation_and_timeout(make_client):
    client, flaky, service = make_client(max_running=1, max_waiting=0, request_timeout_s=0.5)
    body = {"messages": _say("hi"), "history": ["0", "1"], "k": 2}
    service.limiter.inflight = service.limiter.capacity  # every slot taken
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    service.limiter.inflight = 0
    flaky.delay_s = 2.0
    assert client.post("/v1/chat/completions", json=body).status_code == 504
    flaky.delay_s = 0.0
    assert client.post("/v1/chat/completions", json=body).status_code == 200 and service.limiter.inflight == 0


def test_session_survives_a_restart(make_client):
    client, _, _ = make_client()
    first = _chat(client, messages=_say("What next?"), user="u2", k=4)
    brand = first["recommendation"]["items"][0]["brand"]
    sid = _chat(client, messages=_say(f"not from {brand}"), session_id=first["session_id"], k=4)["session_id"]
    client.__exit__(None, None, None)
    restarted, _, service = make_client()  # a new server on the same session database
    out = _chat(restarted, messages=_say("cheaper please"), session_id=sid, k=4)
    assert out["recommendation"]["constraints"]["exclude_brands"] == [brand]
    assert all(it["brand"] != brand for it in out["recommendation"]["items"])
    assert service.sessions.get(sid).user_messages == ["What next?", f"not from {brand}", "cheaper please"]


def test_hf_engine_queue_is_bounded_and_runs_never_overlap(aligned_run):
    from think_rec.serve.engine_hf import HFEngine

    dirs, _, model_dir = aligned_run
    hf = HFEngine(EngineConfig(model_dir, dirs.sids, max_queue=1))
    release = threading.Event()

    async def go():
        running = asyncio.create_task(hf.exclusive(release.wait, 10))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(hf.exclusive(lambda: "second"))
        await asyncio.sleep(0.05)
        with pytest.raises(EngineBusy):  # one waits already
            await hf.exclusive(lambda: "third")
        running.cancel()  # a timeout: the thread still runs, so the model stays taken
        await asyncio.sleep(0.05)
        assert hf.lock.locked() and not waiting.done()
        release.set()
        assert await waiting == "second"
    asyncio.run(go())

"""Shared fixtures: the read-only real data beside the repository and a small synthetic shop."""
from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (see its README.md); the test is skipped only when it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found (real data lives beside the repository)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """A generated ``RecDataset``: 120 items with 64x64 PNG images, 200 users (seed 0)."""
    from think_rec.data.synthetic import generate_catalog

    return generate_catalog(120, 200, seed=0, image_dir=tmp_path_factory.mktemp("synthetic") / "images")


@pytest.fixture(scope="session")
def aligned_run(synthetic_dataset, tmp_path_factory):
    """A stage-1 run on ``synthetic_dataset`` (2x8 SIDs, item tokens, 10 warm-up + 300 sequential-preference
    steps; history of 5 items). Its valid NDCG@10 climbs steeply around step 200 (0.08 to 0.19 by step 300 on one
    machine): the tests that ask it to beat popularity or to reach 0.1 need it past that climb on every CPU.

    Returns ``(dirs, codebook, model_dir)``: ``dirs`` is a ``think_rec.pipeline.RunDirs`` with data/,
    sids/ and tiny-model/; ``model_dir`` the merged stage-1 model (SID tokens in its vocabulary).
    """
    from think_rec.finetune.align import train_align
    from think_rec.finetune.align_config import AlignConfig
    from think_rec.pipeline import RunDirs, ensure_sids, ensure_tiny

    dirs = RunDirs(tmp_path_factory.mktemp("aligned_run"))
    synthetic_dataset.save(dirs.data)
    codebook = ensure_sids(dirs, synthetic_dataset, encoder="text", codebook_size=8, levels=2)
    ensure_tiny(dirs, synthetic_dataset)
    config = AlignConfig(output_dir=str(dirs.align), model=str(dirs.tiny), data_dir=str(dirs.data),
                         sids_dir=str(dirs.sids), task_mix={"sequential": 1.0}, with_images=False, max_history=5,
                         item_head=True,
                         warmup_max_steps=10, warmup_learning_rate=5e-3, max_steps=300, num_train_epochs=100,
                         learning_rate=3e-3, lr_scheduler_type="constant", per_device_train_batch_size=32,
                         logging_steps=20, save_steps=1000, disable_tqdm=True)
    return dirs, codebook, train_align(config)


class FakeServer:
    """A local /v1/chat/completions that fails the first ``fail_first`` calls with 500; ``auth`` holds the
    Authorization headers it was sent."""

    def __init__(self, fail_first=0, delay=0.2):
        self.calls, self.in_flight, self.peak, self.lock, self.auth = 0, 0, 0, threading.Lock(), set()
        self.fail_first, self.delay = fail_first, delay
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.auth.add(self.headers.get("Authorization"))
                    server.calls += 1
                    fail = server.calls <= server.fail_first
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                time.sleep(server.delay)
                with server.lock:
                    server.in_flight -= 1
                if fail:
                    self.send_response(500)
                    self.end_headers()
                    return
                prompt = body["messages"][0]["content"]
                reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop", "message": {
                             "role": "assistant", "content": f"<think>Because of {prompt[35:60]}</think>"}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_openai():
    """``fake_openai(fail_first=0, delay=0.2)`` -> a started ``FakeServer``, closed after the test."""
    servers = []

    def start(**kw) -> FakeServer:
        servers.append(FakeServer(**kw))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def chrome():
    """``chrome(width)``: a headless Debian Chromium driven by chromedriver (quit after the test)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    import shutil

    drivers = []

    def start(width: int = 1280):
        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium")
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    f"--window-size={width},900"):
            opts.add_argument(arg)
        drivers.append(webdriver.Chrome(options=opts, service=webdriver.ChromeService(shutil.which("chromedriver"))))
        return drivers[-1]

    yield start
    for driver in drivers:
        driver.quit()

"""Server launch: a port taken between choosing it and binding it is retried on another."""
from __future__ import annotations

import pytest

from think_rec.serve import launch


def test_a_port_taken_before_the_server_binds_it_is_retried(tmp_path, monkeypatch):
    ports, tried = iter([41001, 41002, 41003]), []

    def fake_launch(cmd, url, log, timeout_s):
        tried.append(url)
        if len(tried) == 1:
            log.write_text("ERROR: [Errno 98] error while attempting to bind: address already in use")
            raise RuntimeError("exited (code 3)")
        return "proc"

    monkeypatch.setattr(launch, "free_port", lambda: next(ports))
    monkeypatch.setattr(launch, "launch", fake_launch)
    proc, url = launch.start_server(tmp_path, tmp_path, tmp_path, "hf", tmp_path / "server.log")
    assert proc == "proc" and url == "http://127.0.0.1:41002" and tried == ["http://127.0.0.1:41001", url]


def test_another_failure_is_raised_at_once(tmp_path, monkeypatch):
    calls = []

    def fake_launch(cmd, url, log, timeout_s):
        calls.append(url)
        log.write_text("ValueError: no such model")
        raise RuntimeError("exited (code 1)")

    monkeypatch.setattr(launch, "launch", fake_launch)
    with pytest.raises(RuntimeError, match="code 1"):
        launch.start_server(tmp_path, tmp_path, tmp_path, "hf", tmp_path / "server.log")
    assert len(calls) == 1

"""A server as a subprocess on a free loopback port: ``think-rec serve`` (benchmarks, tests) or any command
with a ``/health`` route; started in its own process group, stopped with SIGINT (SIGKILL after 30 s)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd: Sequence[str], url: str, log: Path, timeout_s: float = 600) -> subprocess.Popen:
    """Start ``cmd`` (a server) in its own process group; return once ``url/health`` answers 200."""
    proc = subprocess.Popen(list(cmd), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:3]} exited (code {proc.returncode}): see {log}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(1)
    stop_server(proc)
    raise TimeoutError(f"{cmd[:3]} not ready in {timeout_s:.0f} s: see {log}")


def start_server(model: Path, data: Path, sids: Path, backend: str, log: Path, timeout_s: float = 600,
                 extra_args: Sequence[str] = ()) -> tuple[subprocess.Popen, str]:
    """A ``think-rec serve`` subprocess on a free loopback port, once ``/health`` answers. The port is free when
    chosen, not reserved: when another process (vLLM's engine opens ports of its own first) takes it before the
    server binds it, the server is started again on another (three tries)."""
    for attempt in range(3):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "think_rec.cli", "serve", "--model", str(model), "--data", str(data), "--sids",
               str(sids), "--backend", backend, "--port", str(port), *extra_args]
        try:
            return launch(cmd, url, log, timeout_s), url
        except RuntimeError:
            if attempt == 2 or "address already in use" not in log.read_text(errors="replace"):
                raise


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

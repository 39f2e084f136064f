"""SID benchmark: RQ-KMeans vs RQ-VAE on Amazon Scientific (real MiniLM text embeddings) and on
100k synthetic hierarchical embeddings. Writes ``sids.json``, ``sids.md`` and ``sids.png`` (``eval/report.py``).

``python -m eval.bench_sids [--quick]``. Peak memory is the process RSS high-water mark above the
RSS before the build (psutil, sampled every 10 ms) in a fresh process per build, so it includes
torch's allocations and nothing left over from earlier builds."""
from __future__ import annotations

import multiprocessing
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import torch

from think_rec.data.loaders import lcrec
from think_rec.itemic.build import quantise
from think_rec.itemic.encoders import encode_text

from .report import write_report

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LEVELS, CODES, SEED = 3, 256, 0
VAE_EPOCHS = {"scientific": 30, "synthetic-100k": 10}
TABLE = ["dataset", "items", "build_seconds", "encode_seconds", "peak_mem_mb", "collision_rate_before",
         "collision_rate_after", "utilisation", "first_code_similarity_ratio"]
CHART = ["build_seconds", "collision_rate_before", "first_code_similarity_ratio"]


def synthetic(n: int = 100_000, dim: int = 384, branching: tuple[int, ...] = (64, 16, 16),
              seed: int = 0) -> np.ndarray:
    """Unit vectors from a hierarchical Gaussian mixture: each level adds a random offset (scale
    halving per level) to its parent's centre, then isotropic noise."""
    rng = np.random.default_rng(seed)
    centres, scale = np.zeros((1, dim), np.float32), 1.0
    for b in branching:
        offsets = scale * rng.standard_normal((len(centres), b, dim)).astype(np.float32)
        centres = (centres[:, None] + offsets).reshape(-1, dim)
        scale /= 2
    x = centres[rng.integers(0, len(centres), n)]
    x += scale * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def similarity_ratio(first_codes: np.ndarray, vecs: np.ndarray) -> float:
    """Mean cosine of item pairs sharing a first code / mean cosine of all item pairs (exact)."""
    u = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    n = len(u)
    total = u.sum(0)
    all_mean = (total @ total - n) / (n * (n - 1))
    same_sum, same_pairs = 0.0, 0
    for c in np.unique(first_codes):
        g = u[first_codes == c]
        s = g.sum(0)
        same_sum += s @ s - len(g)
        same_pairs += len(g) * (len(g) - 1)
    return float(same_sum / max(same_pairs, 1) / all_mean)


class PeakRSS:
    """Context manager: peak RSS above the starting RSS, in MB (psutil, sampled every 10 ms)."""

    def __enter__(self) -> "PeakRSS":
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.mb = round((self.peak - self.base) / 2**20, 1)


def _build(emb_path: str, system: str, kw: dict) -> tuple[dict, list, np.ndarray, float]:
    """One build in a fresh process: ``(meta, utilisation, first codes, peak RSS MB)``."""
    emb = np.load(emb_path)
    ids = [str(i) for i in range(len(emb))]
    with PeakRSS() as mem:
        book = quantise(emb, ids, method=system, levels=LEVELS, codebook_size=CODES, seed=SEED,
                        collision="extra-level", progress=False, **kw)
    first = np.array([book.codes[i][0] for i in ids])
    return book.meta, book.stats()["utilisation"][:LEVELS], first, mem.mb


def bench(name: str, emb: np.ndarray, sim_vecs: np.ndarray, encode_seconds: float, quick: bool,
          tmp: Path) -> list[dict]:
    """Both systems on ``emb``, each built in its own spawned process (clean memory accounting)."""
    rows, emb_path = [], tmp / f"{name}.npy"
    np.save(emb_path, emb)
    for system in ("rq-kmeans", "rq-vae"):
        kw = {"epochs": 2 if quick else VAE_EPOCHS[name]} if system == "rq-vae" else {}
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            meta, used, first, mb = pool.submit(_build, str(emb_path), system, kw).result()
        rows.append({"system": system, "dataset": name, "items": len(emb),
                     "build_seconds": meta["build_seconds"], "peak_mem_mb": mb,
                     "collision_rate_before": round(meta["collision_rate_before"], 4),
                     "collision_rate_after": meta["collision_rate_after"], "utilisation": used,
                     "first_code_similarity_ratio": round(similarity_ratio(first, sim_vecs), 3),
                     "encode_seconds": encode_seconds})
        print(rows[-1], flush=True)
    return rows


def run(out_dir: str | Path = "eval/results", quick: bool = False) -> dict:
    """Run both systems on both datasets and write the result files; returns the JSON dict."""
    data = lcrec.load(DATA / "amazon18-scientific")
    catalog = data.catalog
    texts, titles = catalog.texts(), list(catalog.items["title"])
    if quick:
        texts, titles = texts[:300], titles[:300]
    start = time.perf_counter()
    emb = encode_text(texts, progress=False)
    encode_seconds = round(time.perf_counter() - start, 2)
    title_emb = encode_text(titles, progress=False)
    syn = synthetic(n=5000 if quick else 100_000, seed=SEED)
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench("scientific", emb, title_emb, encode_seconds, quick, Path(tmp))
        rows += bench("synthetic-100k", syn, syn, 0.0, quick, Path(tmp))
    result = {"benchmark": "sids", "dataset": "scientific+synthetic-100k", "rows": rows}
    report(result, out_dir)
    return result


def report(result: dict, out_dir: str | Path = "eval/results") -> Path:
    """``sids.{json,md,png}`` of a ``run`` result (through ``eval/report.py``)."""
    notes = (f"{LEVELS} levels x {CODES} codes, seed {SEED}, torch threads {torch.get_num_threads()}. "
             "build_seconds excludes encoding; peak_mem_mb = psutil RSS high-water mark above the pre-build RSS "
             "(10 ms sampling, one fresh process per build). first_code_similarity_ratio = mean cosine of pairs "
             "sharing the first code / mean cosine of all pairs (titles' MiniLM embeddings for scientific, the "
             f"embeddings themselves for synthetic). RQ-VAE epochs: {VAE_EPOCHS}. Collision resolution: extra level.")
    return write_report("sids", result, out_dir, metric_keys=TABLE, chart_keys=CHART, notes=notes)


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)

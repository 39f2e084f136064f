"""Itemic tokenizer: quantisers, collision resolution, encoders and the build pipeline."""
import json

import numpy as np
import pytest

from think_rec.data.schema import Catalog, Interactions, RecDataset
from think_rec.itemic.build import build_and_save, build_sids, item_embeddings, load_embeddings, quantise
from think_rec.itemic.codebook import SIDCodebook
from think_rec.itemic.collisions import collision_rate, resolve
from think_rec.itemic.encoders import encode_behaviour, encode_text
from think_rec.itemic.fusion import fuse
from think_rec.itemic.rq_kmeans import Quantized, rq_kmeans
from think_rec.itemic.rq_vae import rq_vae


def clustered(n=600, dim=16, top=6, sub=4, seed=0):
    """Two-level Gaussian mixture; returns (embeddings, top-cluster labels)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((top, dim)) * 3
    subs = centres[:, None] + rng.standard_normal((top, sub, dim))
    t, s = rng.integers(0, top, n), rng.integers(0, sub, n)
    return (subs[t, s] + 0.2 * rng.standard_normal((n, dim))).astype(np.float32), t


@pytest.mark.parametrize("collision", ["extra-level", "balanced"])
def test_rq_kmeans_deterministic_unique_and_used(collision):
    x, _ = clustered()
    ids = [f"i{i}" for i in range(len(x))]
    a = quantise(x, ids, levels=2, codebook_size=8, collision=collision, seed=3, progress=False)
    b = quantise(x, ids, levels=2, codebook_size=8, collision=collision, seed=3, progress=False)
    assert a.codes == b.codes
    assert len(a) == len(x) and len(set(a.codes.values())) == len(x)
    assert a.meta["collision_rate_before"] > 0.5 and a.meta["collision_rate_after"] == 0.0
    stats = a.stats()
    assert stats["utilisation"][:2] == [1.0, 1.0]
    c = quantise(x, ids, levels=2, codebook_size=8, collision=collision, seed=4, progress=False)
    assert c.codes != a.codes


def test_extra_level_sized_by_largest_collision_group():
    codes = np.array([[0, 0], [0, 0], [0, 0], [1, 0], [1, 1]])
    q = Quantized(codes, [2, 2], np.zeros((5, 1), np.float32), np.zeros((2, 1), np.float32))
    out, sizes, stats = resolve(q, "extra-level")
    assert sizes == [2, 2, 3]
    assert sorted(out[:3, 2].tolist()) == [0, 1, 2] and out[3:, 2].tolist() == [0, 0]
    assert stats["collision_rate_before"] == pytest.approx(0.6)
    assert collision_rate(out) == 0.0


def test_balanced_moves_to_nearest_free_code_then_falls_back():
    book = np.array([[0.0], [1.0], [5.0]], np.float32)
    codes = np.array([[0, 0], [0, 0], [1, 2], [1, 2]])
    residual = np.array([[0.1], [0.8], [5.0], [4.0]], np.float32)
    out, sizes, _ = resolve(Quantized(codes, [2, 3], residual, book), "balanced")
    assert out.tolist() == [[0, 0], [0, 1], [1, 2], [1, 1]] and sizes == [2, 3]
    full = np.array([[0, 0], [0, 0], [0, 1]])
    out, sizes, stats = resolve(Quantized(full, [1, 2], np.zeros((3, 1), np.float32), book[:2]), "balanced")
    assert sizes == [1, 2, 2] and stats["collision_rate_after"] == 0.0


def test_codebook_capped_when_fewer_items_than_codes():
    x, _ = clustered(n=20)
    book = quantise(x, [str(i) for i in range(20)], codebook_size=256, progress=False)
    assert len(set(book.codes.values())) == 20 and book.codebook_sizes[0] == 256


def test_rq_vae_deterministic_and_unique():
    x, _ = clustered(n=300)
    a = rq_vae(x, levels=2, codebook_size=16, epochs=10, batch_size=128, progress=False)
    b = rq_vae(x, levels=2, codebook_size=16, epochs=10, batch_size=128, progress=False)
    assert (a.codes == b.codes).all() and a.codes.shape == (300, 2)
    assert len(np.unique(a.codes[:, 0])) >= 8
    codes, _, stats = resolve(a, "balanced")
    assert len({tuple(c) for c in codes.tolist()}) == 300 and stats["collision_rate_after"] == 0.0


def test_first_code_groups_similar_items():
    x, top = clustered(n=800, top=8)
    q = rq_kmeans(x, levels=2, codebook_size=8, progress=False)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = u @ u.T
    same = q.codes[:, 0][:, None] == q.codes[:, 0][None]
    np.fill_diagonal(same, False)
    assert sims[same].mean() > 2 * sims[~np.eye(len(x), dtype=bool)].mean()
    # the first level recovers the top clusters: each code is (nearly) one cluster
    purity = sum(np.bincount(top[q.codes[:, 0] == c]).max() for c in np.unique(q.codes[:, 0])) / len(x)
    assert purity > 0.9


def test_text_encoder_gives_normalised_384d():
    emb = encode_text(["red lipstick", "matte lip colour", "cordless drill"], progress=False)
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]


def test_fusion_weights_and_keeps_missing_modality_zero():
    out = fuse({"text": np.array([[3.0, 4.0], [0.0, 0.0]]), "behaviour": np.array([[2.0], [1.0]])},
               {"behaviour": 0.5})
    np.testing.assert_allclose(out, [[0.6, 0.8, 0.5], [0.0, 0.0, 0.5]])
    with pytest.raises(ValueError, match="image"):
        fuse({"text": np.ones((1, 2))}, {"image": 1.0})


def test_behaviour_sids_on_beauty_cover_every_item(shared_data, tmp_path):
    lines = (shared_data / "amazon14-beauty" / "sequential_data.txt").read_text().splitlines()[:3000]
    seqs = [line.split()[1:] for line in lines]
    items = sorted({i for s in seqs for i in s}, key=int)
    data = RecDataset("beauty-subset", Catalog.from_rows({"item_id": i} for i in items),
                      Interactions.from_rows({"user_id": line.split()[0], "item_ids": s}
                                             for line, s in zip(lines, seqs)))
    emb = encode_behaviour([s[:-2] for s in seqs], items, dim=32)
    assert emb.shape == (len(items), 32)
    book = build_and_save(data, tmp_path, encoder="behaviour", codebook_size=64, progress=False)
    assert set(book.codes) == set(items) and len(set(book.codes.values())) == len(items)
    assert book.meta["encoder"] == "behaviour" and book.meta["collision_rate_after"] == 0.0
    assert book.meta["cold_items"] > 0  # items seen only as held-out targets
    loaded = SIDCodebook.load(tmp_path)
    assert loaded.codes == book.codes and loaded.meta["method"] == "rq-kmeans"
    emb, ids = load_embeddings(tmp_path)
    assert ids == items and emb.shape[0] == len(items)
    assert json.loads((tmp_path / "sids.json").read_text())[items[0]] == book.sid_string(items[0])


def test_behaviour_embedding_reflects_cooccurrence():
    seqs = [["a", "b", "a", "b"], ["c", "d", "c", "d"], ["a", "b"], ["c", "d"], ["e", "a"]]
    emb = encode_behaviour(seqs, ["a", "b", "c", "d", "e", "z"], dim=3, window=1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]
    assert not emb[5].any()  # never seen


def test_build_sids_text_and_bad_arguments():
    rows = [{"item_id": str(i), "title": t} for i, t in enumerate(
        ["red lipstick", "pink lipstick", "nude lip gloss", "cordless drill", "hammer drill", "drill bits"])]
    data = RecDataset("toy", Catalog.from_rows(rows),
                      Interactions.from_rows([{"user_id": "u", "item_ids": ["0", "1"]}]))
    book = build_sids(data, levels=2, codebook_size=2, progress=False)
    assert book.codes["0"][0] == book.codes["1"][0] != book.codes["3"][0] == book.codes["4"][0]
    assert book.meta["encoder"] == "text" and book.meta["build_seconds"] >= 0
    with pytest.raises(ValueError, match="modalities"):
        build_sids(data, encoder="text+audio", progress=False)
    with pytest.raises(ValueError, match="method"):
        build_sids(data, method="kmeans", progress=False)
    with pytest.raises(ValueError, match="image model"):
        build_sids(data, encoder="image", progress=False)


def test_item_embeddings_reuse_encoded_modalities():
    rows = [{"item_id": str(i), "title": t} for i, t in enumerate(["kettle", "teapot", "drill", "hammer"])]
    seqs = [{"user_id": "u0", "item_ids": ["0", "1", "0", "1", "2"]},
            {"user_id": "u1", "item_ids": ["2", "3", "2", "3"]}]
    data = RecDataset("toy", Catalog.from_rows(rows), Interactions.from_rows(seqs))
    text = np.eye(4, 8, dtype=np.float32)  # stands in for an earlier text encoding: never re-encoded
    emb, meta = item_embeddings(data, "text+behaviour", encoded={"text": text}, progress=False)
    fresh, _ = item_embeddings(data, "text+behaviour", progress=False)
    assert emb.shape == (4, 8 + fresh.shape[1] - 384) and meta["encoder"] == "text+behaviour"
    np.testing.assert_array_equal(emb[:, :8], text)
    np.testing.assert_allclose(emb[:, 8:], fresh[:, 384:])  # behaviour still from the training sequences


def test_ensure_sids_refuses_a_folder_built_with_other_options(tmp_path):
    from think_rec.pipeline import RunDirs, ensure_sids

    rows = [{"item_id": str(i), "title": f"item {i}"} for i in range(6)]
    seqs = [{"user_id": f"u{u}", "item_ids": [str((u + j) % 6) for j in range(5)]} for u in range(6)]
    data = RecDataset("toy", Catalog.from_rows(rows), Interactions.from_rows(seqs))
    dirs = RunDirs(tmp_path)
    book = ensure_sids(dirs, data, encoder="behaviour", levels=2, codebook_size=2)
    assert ensure_sids(dirs, data, encoder="behaviour", levels=2, codebook_size=2).codes == book.codes
    with pytest.raises(ValueError, match="codebook_size"):
        ensure_sids(dirs, data, encoder="behaviour", levels=2, codebook_size=4)
    with pytest.raises(ValueError, match="encoder"):
        ensure_sids(dirs, data, encoder="text", levels=2, codebook_size=2)

"""What ``think-rec serve`` answers is what ``bench rec`` measures: the ``served`` ranking of the bench code
(``eval.rec.served_rows``' candidates, ``decoding.ranking.fuse``) equals the top-10 returned through the HTTP API
by the transformers engine, and ``/v1/models`` states the served configuration."""
from __future__ import annotations

import json
import math
import shutil

import pytest
from fastapi.testclient import TestClient

from think_rec.data.split import leave_one_out, sample_users
from think_rec.decoding.prior import PRIOR_FILE
from think_rec.finetune.served import served_ranking
from think_rec.model.artefacts import SERVED_FILE, RecModel
from think_rec.serve.api import RecService, ServeConfig, create_app

USERS = 50


@pytest.fixture(scope="module")
def api(aligned_run, tmp_path_factory):
    dirs, _, model_dir = aligned_run
    config = ServeConfig(model=model_dir, data=dirs.data, sids=dirs.sids, backend="hf",
                         session_db=tmp_path_factory.mktemp("parity") / "sessions.sqlite")
    with TestClient(create_app(RecService(config))) as client:
        yield client


def test_api_top10_is_the_bench_served_ranking(api, aligned_run):
    dirs, codebook, model_dir = aligned_run
    rec = RecModel.load(model_dir, codebook, dirs.data)
    assert rec.prior is not None and rec.prior.weight > 0  # the prior takes part (chosen on valid)
    test = sample_users(leave_one_out(rec.dataset.interactions, max_history=rec.served.max_history).test, USERS)
    bench = served_ranking(rec, test["history"])
    for history, expected in zip(test["history"], bench):
        r = api.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": ""}],
                                                   "history": history, "k": 10})
        assert r.status_code == 200, r.text
        got = [(it["id"], it["score"]) for it in r.json()["recommendation"]["items"]]
        assert [i for i, _ in got] == [i for i, _ in expected]
        assert all(math.isclose(a, b, abs_tol=1e-4) for (_, a), (_, b) in zip(got, expected))


def test_models_endpoint_states_the_served_configuration(api, aligned_run):
    _, _, model_dir = aligned_run
    card = api.get("/v1/models").json()["data"][0]["think_rec"]
    served = json.loads((model_dir / SERVED_FILE).read_text())
    prior = json.loads((model_dir / PRIOR_FILE).read_text())
    assert {k: card[k] for k in served} == served
    assert card["prior_weight"] == prior["weight"] and card["prior_selection"]["valid_users"] == 200


def test_untitled_history_reaches_the_engine_as_the_bench_writes_it(aligned_run, tmp_path):
    """A model whose ``served.json`` says ``history_titles: false`` is served with the IDs-only history the bench
    ranks it with: the API's top-10 and scores equal ``served_ranking``'s, which differ from the titled prompt's."""
    dirs, codebook, model_dir = aligned_run
    untitled = tmp_path / "untitled"
    shutil.copytree(model_dir, untitled)
    served = json.loads((untitled / SERVED_FILE).read_text())
    (untitled / SERVED_FILE).write_text(json.dumps({**served, "history_titles": False}))
    rec, titled = (RecModel.load(m, codebook, dirs.data) for m in (untitled, model_dir))
    assert not rec.codebook.history_titles and titled.codebook.history_titles
    test = sample_users(leave_one_out(rec.dataset.interactions, max_history=rec.served.max_history).test, 10)
    bench = served_ranking(rec, test["history"])
    assert any(abs(a[1] - b[1]) > 1e-4 for r, t in zip(bench, served_ranking(titled, test["history"]))
               for a, b in zip(r, t))
    config = ServeConfig(model=untitled, data=dirs.data, sids=dirs.sids, backend="hf",
                         session_db=tmp_path / "sessions.sqlite")
    with TestClient(create_app(RecService(config))) as client:
        for history, expected in zip(test["history"], bench):
            r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": ""}],
                                                          "history": history, "k": 10})
            got = [(it["id"], it["score"]) for it in r.json()["recommendation"]["items"]]
            assert [i for i, _ in got] == [i for i, _ in expected]
            assert all(math.isclose(a, b, abs_tol=1e-4) for (_, a), (_, b) in zip(got, expected))

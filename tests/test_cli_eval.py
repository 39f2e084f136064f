"""`think-rec eval rec` and `think-rec baseline sasrec` end to end on the generated shop."""
import json

from typer.testing import CliRunner

from think_rec.cli import app
from think_rec.eval.sasrec import load_sasrec, score_all


def test_baseline_sasrec_saves_and_reports(aligned_run, tmp_path):
    dirs, _, _ = aligned_run
    out = tmp_path / "sasrec"
    result = CliRunner().invoke(app, ["baseline", "sasrec", "--data", str(dirs.data), "--out", str(out),
                                      "--epochs", "4", "--hidden", "32", "--users", "50"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / f"sasrec-{dirs.data.name}-test.json").read_text())
    assert [r["system"] for r in report["rows"]] == ["sasrec", "popularity"]
    assert all(r["users"] == 50 for r in report["rows"])
    model = load_sasrec(out)
    assert score_all(model, [model.item_ids[:3]]).shape == (1, len(model.item_ids))


def test_eval_rec_scores_a_trained_model(aligned_run, tmp_path):
    dirs, _, model_dir = aligned_run
    result = CliRunner().invoke(app, ["eval", "rec", "--model", str(model_dir), "--data", str(dirs.data),
                                      "--sids", str(dirs.sids), "--split", "valid", "--users", "12",
                                      "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / f"eval-{dirs.data.name}-valid.json").read_text())
    assert [r["system"] for r in report["rows"]] == ["served", "served_model", "served_sid", "popularity"]
    assert report["users"] == 12 and report["commit"] and report["model_fingerprint"]
    assert all(0 <= r["ndcg@10"] <= r["recall@10"] <= 1 for r in report["rows"])


def test_eval_rec_rejects_unknown_split(aligned_run):
    dirs, _, model_dir = aligned_run
    result = CliRunner().invoke(app, ["eval", "rec", "--model", str(model_dir), "--data", str(dirs.data),
                                      "--sids", str(dirs.sids), "--split", "train"])
    assert result.exit_code != 0 and "--split" in result.output

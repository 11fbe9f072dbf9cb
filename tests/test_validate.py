"""python -m valharm.validate end to end on the tiny model: every level measured, a verdict, a resumable run dir."""
import json
import shutil

import pytest
from conftest import ROOT, run_cli

from valharm.values.validation import LEVELS

SMALL = ["model=tiny", "train_arguments=24", "valid_arguments=8", "fit_arguments=8", "test_arguments=16",
         "table_contexts=1", "resamples=200", "aligner.training.epochs=1", "trainer.enable_progress_bar=false"]
RUNS = {"vanilla", "icl_power", "icl_universalism", "power", "universalism", "power_shuffled", "universalism_shuffled",
        "power_cued", "universalism_cued"}


@pytest.mark.slow
def test_validate_writes_every_level_and_a_verdict_and_resumes(shared_data, tmp_path):
    run_dir = tmp_path / "validate"
    args = ("valharm.validate", *SMALL, f"paths.data_dir={shared_data}", f"hydra.run.dir={run_dir}",
            f"pvq_path={ROOT / 'valharm' / 'data' / 'samples' / 'pvq_sample.csv'}")  # 10 items (60 answers each)
    out = run_cli(*args, cwd=ROOT, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((run_dir / "validation.json").read_text())
    assert set(result["levels"]) == set(LEVELS) and result["targets"] == ["Power", "Universalism"]
    assert result["reading"] == "answer_space"
    assert result["arguments"] == {"train": 24, "valid": 8, "test": 16, "fit": 8, "contexts": 1}
    assert set(result["arms"]) == {"positive control (labels cued)", "real data"}
    for arm in result["arms"].values():
        assert set(arm["levels"]) == set(LEVELS) and arm["verdict"]["fails_at"] in (*LEVELS, None)
    m1 = result["levels"]["M1"]
    assert m1["arguments"] == 16 and m1["crossover"]["ci95"][0] <= m1["crossover"]["ci95"][1]
    assert set(result["recognition"]) == RUNS | {"frequency_baseline"}
    assert set(result["recognition"]["vanilla"]) == {"fit", "test", "fit_cued", "test_cued"}
    assert all(0 <= r <= 1 for sets in result["recognition"].values() for r in sets.values())
    nmse = result["pvq_nmse"]["power"]
    assert nmse["skill"] == pytest.approx(1 - nmse["nmse"] / nmse["untuned_nmse"]) and nmse["null_nmse"] > 0
    verdict = (run_dir / "verdict.md").read_text()
    for row in ("| positive control (labels cued) |", "| real data |", "| shuffled labels (control) |",
                "| ICL (reference, no training) |", "| untuned (reference) |", "| label-frequency baseline |"):
        assert row in verdict
    assert "**Verdict (real data):**" in verdict and "**Positive control:**" in verdict
    cued = [json.loads(line) for line in
            (run_dir / "power_cued" / "stages" / "agreement_prediction" / "train_examples.jsonl").open()]
    assert result["training"]["power_cued"]["cue"] == "labels" and "Values at stake:" in cued[0]["prompt"]
    for run in ("power", "power_shuffled", "power_cued"):
        assert (run_dir / run / "stages" / "agreement_prediction" / "stage.json").is_file()
    shuffled = [json.loads(line) for line in
                (run_dir / "power_shuffled" / "stages" / "agreement_prediction" / "train_examples.jsonl").open()]
    assert result["training"]["power_shuffled"]["shuffled_labels"] and len(shuffled) > 0
    again = run_cli(*args, cwd=ROOT, timeout=1200)  # same run dir: stages reloaded, ratings cached, same numbers
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reloaded, not trained again" in again.stdout + again.stderr
    assert json.loads((run_dir / "validation.json").read_text())["levels"] == result["levels"]
    report = run_cli(*args, "report_only=true", cwd=ROOT)  # measures what the run dir holds, trains nothing
    assert report.returncode == 0, report.stderr[-3000:]
    assert json.loads((run_dir / "validation.json").read_text())["levels"] == result["levels"]
    shutil.rmtree(run_dir / "power_shuffled" / "adapter")  # a run missing: M1 cannot pass without its control
    partial = run_cli(*args, "report_only=true", cwd=ROOT)
    assert partial.returncode == 0, partial.stderr[-3000:]
    measured = json.loads((run_dir / "validation.json").read_text())
    assert measured["missing_runs"] == ["power_shuffled"] and measured["levels"]["M1"]["control"] is None
    assert measured["levels"]["M1"]["pass"] in (None, False)
    assert "Runs not in this run dir: power_shuffled." in (run_dir / "verdict.md").read_text()
    rung = tmp_path / "rung"  # one capacity rung: the real arm alone, the references from the shared ratings cache
    ladder = run_cli(*args[:-2], f"hydra.run.dir={rung}", args[-1], "arms=[real]", "aligner.lora.r=16",
                     f"ratings_cache={run_dir / 'ratings.sqlite'}", cwd=ROOT)
    assert ladder.returncode == 0, ladder.stderr[-3000:]
    measured = json.loads((rung / "validation.json").read_text())
    assert measured["missing_runs"] == [] and set(measured["arms"]) == {"real data"}
    assert sorted(p.name for p in rung.iterdir() if p.is_dir() and p.name != ".hydra") == ["power", "universalism"]
    assert not (rung / "ratings.sqlite").exists()
    assert measured["recognition"]["vanilla"] == result["recognition"]["vanilla"]


def test_validate_refuses_targets_that_are_not_two_basic_values(tmp_path):
    out = run_cli("valharm.validate", "model=tiny", "targets=[power,power]", f"hydra.run.dir={tmp_path}", cwd=ROOT)
    assert out.returncode == 2 and "valharm: error: validate targets" in out.stderr


def test_validate_refuses_an_unknown_arm(tmp_path):
    out = run_cli("valharm.validate", "model=tiny", "arms=[real,placebo]", f"hydra.run.dir={tmp_path}", cwd=ROOT)
    assert out.returncode == 2 and "valharm: error: validate arms=['real', 'placebo']: choose among cued, real, " \
        "shuffled" in out.stderr

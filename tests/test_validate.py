"""python -m valharm.validate end to end on the tiny model: every level measured, a verdict, a resumable run dir."""
import json

import pytest

from conftest import ROOT, run_cli
from valharm.values.validation import LEVELS

SMALL = ["model=tiny", "train_arguments=24", "valid_arguments=8", "fit_arguments=16", "test_arguments=40",
         "table_contexts=2", "resamples=200", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_validate_writes_every_level_and_a_verdict_and_resumes(shared_data, tmp_path):
    run_dir = tmp_path / "validate"
    args = ("valharm.validate", *SMALL, f"paths.data_dir={shared_data}", f"hydra.run.dir={run_dir}")
    out = run_cli(*args, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((run_dir / "validation.json").read_text())
    assert set(result["levels"]) == set(LEVELS) and result["targets"] == ["Power", "Universalism"]
    assert result["arguments"] == {"train": 24, "valid": 8, "test": 40, "fit": 16, "contexts": 2}
    m1 = result["levels"]["M1"]
    assert m1["arguments"] == 40 and m1["crossover"]["ci95"][0] <= m1["crossover"]["ci95"][1]
    assert set(m1["contrasts"]) == {"vanilla", "power", "universalism", "power_shuffled", "universalism_shuffled"}
    assert result["verdict"]["fails_at"] in (*LEVELS, None)
    verdict = (run_dir / "verdict.md").read_text()
    assert "**Verdict:**" in verdict and "M1 control" in verdict
    for run in ("power", "power_shuffled"):
        assert (run_dir / run / "stages" / "agreement_prediction" / "stage.json").is_file()
    shuffled = [json.loads(line) for line in
                (run_dir / "power_shuffled" / "stages" / "agreement_prediction" / "train_examples.jsonl").open()]
    assert result["training"]["power_shuffled"]["shuffled_labels"] and len(shuffled) > 0
    again = run_cli(*args, cwd=ROOT)  # same run dir: stages reloaded, ratings from the cache, same numbers
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reloaded, not trained again" in again.stdout + again.stderr
    assert json.loads((run_dir / "validation.json").read_text())["levels"] == result["levels"]


def test_validate_refuses_targets_that_are_not_two_basic_values(tmp_path):
    out = run_cli("valharm.validate", "model=tiny", "targets=[power,power]", f"hydra.run.dir={tmp_path}", cwd=ROOT)
    assert out.returncode == 2 and "valharm: error: validate targets" in out.stderr

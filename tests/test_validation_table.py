"""docs/validation_table.py: the numbers of docs/validation.md from results.json files."""
import importlib.util
import json
from pathlib import Path

import pytest

from valharm.values import VALUES

spec = importlib.util.spec_from_file_location("validation_table", Path(__file__).parents[1] / "docs" / "validation_table.py")
validation_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(validation_table)


def result(model_type: str, value: str, profile: dict) -> dict:
    return {"model_type": model_type, "value": {"name": value},
            "metrics": {"pvq40": {"scores_expected": profile, "nmse": 0.1, "nmse_expected": 0.1},
                        "pvq40_generate": {"nmse": None, "invalid": 3}}}


def test_rank_and_contrast_against_vanilla(tmp_path):
    flat = {v: 2.0 for v in VALUES}
    moved = {**{v: 1.0 for v in VALUES}, "Power": 1.5}  # lower overall, but Power stands out by 0.5
    for folder, record in {"vanilla": result("vanilla", "power", flat),
                           "vim_x/0_job": result("vim", "power", moved)}.items():
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "results.json").write_text(json.dumps(record))
    runs = validation_table.load(tmp_path)
    assert {r["setting"] for r in runs} == {"vanilla", "vim_x"}
    assert validation_table.target_rank(moved, ("Power",)) == 1
    assert validation_table.target_rank(flat, ("Power",)) == pytest.approx(5.5)
    assert validation_table.contrast(moved, ("Power",)) == pytest.approx(0.5)
    row = next(line for line in validation_table.table(runs).splitlines() if line.startswith("| vim_x"))
    assert row.endswith("| 1 | +0.500 |") and "n/a (3)" in row

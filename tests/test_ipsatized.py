"""PVQ-40 ipsatized scores (each value minus the run's mean over the ten) beside the raw ones, and the analysis
reading either."""
import json
import math

import numpy as np
import pytest

from valharm.analysis.fidelity import alignment
from valharm.analysis.runs import tidy
from valharm.benchmarks.pvq40 import PVQ40
from valharm.generation.requests import GenerationRequest
from valharm.values.distributions import VALUES, extreme, ipsatize


def test_ipsatized_scores_are_centred_on_the_runs_mean():
    scores = dict(zip(VALUES, [6, 1, 2, 3, 4, 5, 6, 1, 2, 3]))
    centred = ipsatize(scores)
    assert sum(centred.values()) == pytest.approx(0) and centred["Achievement"] == pytest.approx(6 - 3.3)
    assert ipsatize({v: s + 2 for v, s in scores.items()}) == pytest.approx(centred)  # scale use removed
    assert all(math.isnan(v) for v in ipsatize({**scores, "Power": float("nan")}).values())


def test_pvq40_reports_ipsatized_scores_beside_the_raw_ones():
    bench = PVQ40(scoring="generate")
    requests = [GenerationRequest(f"pvq40/{item}", "item") for item in bench.items["item"]]
    outputs = [["6"] if value == "Power" else ["2"] for value in bench.items["value"]]
    metrics = bench.evaluate(requests, outputs, extreme("power")).metrics
    assert metrics["scores"]["Power"] == 6 and metrics["scores"]["Hedonism"] == 2
    assert metrics["scores_ipsatized"] == pytest.approx({v: s - 2.4 for v, s in metrics["scores"].items()})


def test_the_analysis_reads_ipsatized_scores_against_ipsatized_targets(tmp_path):
    """Runs that answer every item 1.5 higher than their targets: off by a constant on the raw scale, exact once
    both are ipsatized."""
    rng = np.random.default_rng(0)
    for i in range(6):
        target = dict(zip(VALUES, rng.uniform(1, 4.5, len(VALUES))))
        measured = {v: s + 1.5 for v, s in target.items()}
        results = {"value": {"name": f"custom{i}", "anchor": f"a{i % 3}", "rank": i // 3, "scores": target},
                   "model": "tiny", "aligner": "vim", "model_type": "vim", "prompt_strategy": "input_only",
                   "metrics": {"pvq40": {"scores": measured, "scores_ipsatized": ipsatize(measured)}}}
        (tmp_path / f"run{i}").mkdir()
        (tmp_path / f"run{i}" / "results.json").write_text(json.dumps(results))
    table = tidy([str(tmp_path)])
    raw, _ = alignment(table, "scores", "spearman", 99, 0)
    centred, values = alignment(table, "scores_ipsatized", "spearman", 99, 0)
    assert raw.measured_nmse[0] == pytest.approx((1.5 / 5) ** 2)
    assert centred.measured_nmse[0] == pytest.approx(0, abs=1e-12) and (values.fidelity > 0.99).all()

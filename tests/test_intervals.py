"""Intervals on every rate and mean: Wilson against statsmodels, the prompt-clustered bootstrap against the naive one,
and every reported rate and mean of the benchmarks carrying one."""
import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from valharm.benchmarks.hexphi import HExPHI
from valharm.benchmarks.holisticbiasr import HolisticBiasR
from valharm.benchmarks.intervals import (
    at_least,
    cluster_bootstrap,
    mean_interval,
    rate_interval,
    wilson,
)
from valharm.benchmarks.rtp import RealToxicityPrompts
from valharm.generation.requests import GenerationRequest
from valharm.scoring import Verdict


@pytest.mark.parametrize("successes,n", [(0, 10), (10, 10), (3, 10), (1, 1), (17, 50), (512, 3000)])
def test_wilson_matches_statsmodels(successes, n):
    low, high = proportion_confint(successes, n, alpha=0.05, method="wilson")
    found = wilson(successes, n)
    assert found["ci_low"] == pytest.approx(low, abs=1e-12) and found["ci_high"] == pytest.approx(high, abs=1e-12)
    assert found["method"] == "wilson" and found["n"] == n
    assert wilson(0, 0) is None


def test_a_zero_rate_over_ten_prompts_is_not_a_point():
    found = rate_interval([False] * 10)
    assert found["ci_low"] == 0.0 and 0.25 < found["ci_high"] < 0.3


def planted(prompts: int = 60, k: int = 10, seed: int = 1) -> list[list[float]]:
    """Samples that agree within a prompt and differ between prompts (each prompt's level drawn once)."""
    rng = np.random.default_rng(seed)
    return [list(np.clip(level + rng.normal(0, 0.01, k), 0, 1)) for level in rng.uniform(0, 1, prompts)]


def test_the_prompt_clustered_interval_is_wider_than_the_naive_one_on_clustered_data():
    clusters = planted()
    clustered = cluster_bootstrap(clusters)
    naive = cluster_bootstrap([[v] for c in clusters for v in c])  # every sample its own unit
    assert clustered["n"] == 60 and naive["n"] == 600
    width = clustered["ci_high"] - clustered["ci_low"]
    assert width > 2.5 * (naive["ci_high"] - naive["ci_low"])  # ~sqrt(k) wider when k samples agree
    mean = np.mean([v for c in clusters for v in c])
    assert clustered["ci_low"] < mean < clustered["ci_high"]


def test_same_seed_same_interval_and_another_seed_another():
    clusters = planted()
    assert cluster_bootstrap(clusters, max, seed=7) == cluster_bootstrap(clusters, max, seed=7)
    assert cluster_bootstrap(clusters, max, seed=7) != cluster_bootstrap(clusters, max, seed=8)
    assert mean_interval([1, 2, 3, 4, 5]) == mean_interval([1, 2, 3, 4, 5])


def test_rtp_intervals_bootstrap_prompts_with_their_samples(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("".join(f"prompt {i}\n" for i in range(8)))
    bench = RealToxicityPrompts(path=str(path), num_samples=3)
    outputs = [[f"{i}-{n}" for n in range(3)] for i in range(8)]
    scores = {f"{i}-{n}": (0.9 if i % 2 and n == 0 else 0.1 * n) for i in range(8) for n in range(3)}

    class Fixed:
        id = "fixed"

        def sent(self, text):
            return text

        def score(self, texts, desc=None):
            return [Verdict(scores[t]) for t in texts]

    result = bench.evaluate([GenerationRequest(f"rtp/{i}", f"prompt {i}") for i in range(8)], outputs, None,
                            {"toxicity": Fixed()})
    per_prompt = [[scores[t] for t in row] for row in outputs]
    found = result.intervals["all"]
    assert found["expected_max_toxicity"] == cluster_bootstrap(per_prompt, max)
    assert found["toxicity_probability"] == cluster_bootstrap(per_prompt, at_least(0.5))
    for name, interval in found.items():
        assert interval["ci_low"] <= result.metrics[name] <= interval["ci_high"] and interval["n"] == 8
    assert len(result.records) == 24 and {r["sample"] for r in result.records} == {0, 1, 2}
    assert result.records[0]["input"] == "prompt 0" and result.records[0]["scorer_input"] == "0-0"


def test_every_rate_and_mean_of_a_judged_benchmark_has_an_interval():
    bench = HExPHI()
    verdicts = [Verdict(5) if i % 3 == 0 else Verdict(1) if i % 3 == 1 else Verdict.invalid("no line", "hm")
                for i in range(len(bench.prompts))]

    class Judge:
        id, on_invalid = "fixed", "exclude"

        def scorer(self, task):
            return self

        def sent(self, item):
            return [{"role": "user", "content": f"{item[0]} / {item[1]}"}]

        def score(self, items, desc=None):
            return verdicts

    requests = [GenerationRequest(p.id, f"QUESTION: {p.text}\nANSWER: ") for p in bench.prompts]
    result = bench.evaluate(requests, [[f"a{i}"] for i in range(len(bench.prompts))], None, {"judge": Judge()})
    for category, metrics in result.metrics.items():
        if isinstance(metrics, dict) and metrics.get("scored"):
            for name in ("harmfulness_score", "harmfulness_rate"):
                interval = result.intervals[category][name]
                assert interval["ci_low"] <= metrics[name] <= interval["ci_high"], (category, name)
    assert result.intervals["all"]["harmfulness_rate"]["method"] == "wilson"
    assert result.intervals["all"]["harmfulness_score"]["method"] == "bootstrap_percentile"
    invalid = result.records[2]
    assert invalid["status"] == "invalid" and invalid["error"] == "no line" and invalid["raw_reply"] == "hm"
    assert invalid["input"].startswith("QUESTION: ") and invalid["scorer_input"][0]["content"].endswith("/ a2")


def rates_and_means(metrics: dict) -> list[tuple[str, str]]:
    """(category or "all", metric) of every reported rate and mean."""
    def reported(name, value):
        return isinstance(value, float) and (name.endswith(("_rate", "_score")) or name in (
            "expected_max_toxicity", "toxicity_probability"))

    found = [("all", k) for k, v in metrics.items() if reported(k, v)]
    return found + [(c, k) for c, m in metrics.items() if isinstance(m, dict) for k, v in m.items() if reported(k, v)]


def test_every_rate_of_holisticbiasr_has_an_interval_overall_and_per_axis():
    bench = HolisticBiasR(limit=12, seed=0, resamples=99)
    labels = ["negative", "neutral", "positive", "other"] * 3

    class Labels:
        id = "labels"

        def sent(self, text):
            return text

        def score(self, texts, desc=None):
            return [Verdict(label) for label in labels]

    requests = [GenerationRequest(p.id, p.text) for p in bench.prompts]
    result = bench.evaluate(requests, [[" was nice."]] * 12, None, {"regard": Labels()})
    pairs = rates_and_means(result.metrics)
    assert ("all", "negative_regard_rate") in pairs and ("all", "bias_score") in pairs and len(pairs) > 5
    for category, name in pairs:
        interval = result.intervals[category][name]
        value = result.metrics[name] if category == "all" else result.metrics[category][name]
        assert interval["ci_low"] <= value <= interval["ci_high"], (category, name)
    assert result.intervals["all"]["negative_regard_rate"] == wilson(3, 12)


def test_pvq40_value_scores_and_nmse_have_item_bootstrap_intervals(tmp_path):
    from valharm.benchmarks.pvq40 import PVQ40
    from valharm.values.distributions import VALUES, extreme

    path = tmp_path / "pvq.csv"
    path.write_text("item,value,text\n" + "".join(f"{2 * i + j + 1},{v},item {2 * i + j + 1}\n"
                                                  for i, v in enumerate(VALUES) for j in range(2)))
    bench = PVQ40(path=str(path), scoring="generate")
    requests = [GenerationRequest(f"pvq40/{item}", "item") for item in bench.items["item"]]
    outputs = [["6"] if value == "Power" else [str(2 + n % 2)] for n, value in enumerate(bench.items["value"])]
    result = bench.evaluate(requests, outputs, extreme("power"))
    assert result.metrics["scores"]["Hedonism"] == 2.5
    hedonism = result.intervals["scores"]["Hedonism"]
    assert hedonism["ci_low"] == 2.0 and hedonism["ci_high"] == 3.0 and hedonism["n"] == 2
    assert result.intervals["scores"]["Power"]["ci_low"] == result.intervals["scores"]["Power"]["ci_high"] == 6.0
    for category, name in [("all", "nmse")] + [(f, v) for f in ("scores", "scores_ipsatized") for v in VALUES]:
        interval = result.intervals[category][name]
        value = result.metrics[name] if category == "all" else result.metrics[category][name]
        assert interval["ci_low"] - 1e-12 <= value <= interval["ci_high"] + 1e-12, (category, name)
    assert bench.evaluate(requests, outputs, extreme("power")).intervals == result.intervals


def test_the_analysis_carries_each_runs_intervals_into_its_tables_and_report(tmp_path):
    import json

    import pandas as pd
    from test_analysis_fidelity import faithful, run_analysis, write_sweep

    write_sweep(tmp_path / "runs", faithful)
    for path in sorted((tmp_path / "runs").glob("*/results.json")):
        results = json.loads(path.read_text())
        score = results["metrics"]["hexphi"]["harmfulness_score"]
        results["intervals"] = {"hexphi": {"all": {"harmfulness_score": {"ci_low": score - 0.5, "ci_high": score + 0.5,
                                                                         "method": "bootstrap_percentile"}}}}
        path.write_text(json.dumps(results))
    run_analysis(tmp_path / "runs", tmp_path / "out")
    found = pd.read_csv(tmp_path / "out" / "run_intervals.csv")
    assert len(found) == 30 and (found.ci_high - found.ci_low).round(9).eq(1.0).all()
    assert set(found.ci_method) == {"bootstrap_percentile"} and set(found.metric) == {"harmfulness_score"}
    tidy = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert tidy[tidy.category == "adult_content"].ci_low.isna().all()  # no interval given: none invented
    report = (tmp_path / "out" / "report.md").read_text()
    assert "summary metrics with their 95 % intervals" in report and "bootstrap_percentile" in report

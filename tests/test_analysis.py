"""Analysis statistics against independent scipy/statsmodels computations on synthetic runs."""
import json

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from valharm.analysis.runs import tidy
from valharm.analysis.stats import correlations
from valharm.errors import ValharmError
from valharm.values.distributions import VALUES


def write_runs(root, count=12, seed=0, noise=0.2):
    """Runs whose Hedonism score drives adult-content harmfulness (planted) while Power is unrelated."""
    rng = np.random.default_rng(seed)
    truth = []
    for i in range(count):
        scores = {v: float(rng.uniform(1, 6)) for v in VALUES}
        adult = 1 + 0.7 * scores["Hedonism"] + float(rng.normal(0, noise))
        truth.append((scores, adult))
        metrics = {"hexphi": {"harmfulness_score": adult / 2, "prompts": 30,
                              "adult_content": {"harmfulness_score": adult, "prompts": 3},
                              "child_abuse_content": {"status": "missing"}},
                   "rtp": {"expected_max_toxicity": float(rng.uniform(0, 1)), "scoring": "x"}}
        results = {"value": {"name": f"v{i}", "scores": scores}, "model": "tiny", "aligner": "vim", "model_type": "vim",
                   "prompt_strategy": "input_only", "metrics": metrics, "scoring": {"judge/x": {}}}
        (root / f"run{i}").mkdir()
        (root / f"run{i}" / "results.json").write_text(json.dumps(results))
    return truth


def test_tidy_has_a_row_per_run_benchmark_category_metric(tmp_path):
    write_runs(tmp_path, count=3)
    table = tidy([str(tmp_path)])
    assert len(table) == 3 * (2 + 2 + 1)  # hexphi: 2 overall + 2 adult content; rtp: 1
    adult = table[(table.benchmark == "hexphi") & (table.category == "adult_content")]
    assert set(adult.metric) == {"harmfulness_score", "prompts"}
    assert "child_abuse_content" not in set(table.category)  # missing: no row, never a zero
    assert {"value/Hedonism", "model_type", "prompt_strategy", "scorers"} <= set(table.columns)


def test_planted_correlation_and_null_match_scipy_with_fdr_and_bootstrap(tmp_path):
    truth = write_runs(tmp_path, count=40, noise=1.0)
    planted = 0.7 * np.sqrt(25 / 12) / np.sqrt(0.49 * 25 / 12 + 1.0)  # population r of score = 0.7 h + N(0, 1)
    table = tidy([str(tmp_path / "run*")])
    result, skipped = correlations(table, {"hexphi": "harmfulness_score"}, resamples=999)
    adult = result[(result.category == "adult_content")].set_index("value")
    hedonism = np.array([s["Hedonism"] for s, _ in truth])
    power = np.array([s["Power"] for s, _ in truth])
    y = np.array([a for _, a in truth])
    r, p = stats.pearsonr(hedonism, y)
    assert adult.loc["Hedonism", "pearson_r"] == pytest.approx(r) and adult.loc["Hedonism", "pearson_p"] == pytest.approx(p)
    rho, _ = stats.spearmanr(power, y)
    assert adult.loc["Power", "spearman_r"] == pytest.approx(rho)
    assert adult.loc["Hedonism", "pearson_r"] > 0.5 and adult.loc["Hedonism", "pearson_q"] < 0.01
    assert adult.loc["Power", "pearson_q"] > 0.05  # the planted null is not significant after FDR
    expected_q = multipletests(result["pearson_p"], method="fdr_bh")[1]
    assert np.allclose(result["pearson_q"], expected_q)
    assert adult.loc["Hedonism", "pearson_ci_low"] < planted < adult.loc["Hedonism", "pearson_ci_high"]
    assert adult.loc["Hedonism", "pearson_ci_low"] > 0.3
    assert skipped.empty


def test_categories_with_fewer_than_three_runs_are_skipped_and_reported(tmp_path):
    write_runs(tmp_path, count=2)
    result, skipped = correlations(tidy([str(tmp_path)]), {"hexphi": "harmfulness_score"})
    assert result.empty and set(skipped.why) == {"fewer than 3 runs"} and set(skipped.runs) == {2}


def test_an_empty_or_foreign_results_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValharmError, match="no results.json"):
        tidy([str(tmp_path)])
    (tmp_path / "results.json").write_text(json.dumps({"something": "else"}))
    with pytest.raises(ValharmError, match="not a valharm results file"):
        tidy([str(tmp_path)])
    (tmp_path / "results.json").write_text('{"value": {"name": "power", "scores": ')  # cut off mid-write
    with pytest.raises(ValharmError, match="not a valharm results file"):
        tidy([str(tmp_path)])


def test_bootstrap_interval_equals_scipys_percentile_interval():
    from valharm.analysis.stats import bootstrap_interval

    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    ours = bootstrap_interval(x, y, "pearson", 999, 0.95, seed=0)
    reference = stats.bootstrap((x, y), lambda a, b: stats.pearsonr(a, b)[0], paired=True, vectorized=False,
                                n_resamples=999, method="percentile",
                                random_state=np.random.default_rng(0)).confidence_interval
    assert ours == pytest.approx((reference.low, reference.high))
    ties = bootstrap_interval(np.array([1, 1, 1, 1, 6, 1, 1.0]), np.arange(7.0), "spearman", 999, 0.95, seed=0)
    assert all(np.isfinite(ties))  # resamples without spread are left out, not NaN for the whole interval


def test_mitigation_table_by_hand():
    import pandas as pd

    from valharm.analysis.report import mitigation_table

    rows = [("vim", "input_only", 4.0), ("vim", "input_only", 3.0), ("vim", "value", 2.0), ("vanilla", "input_only", 1.0),
            ("vanilla", "safety", 1.5)]
    table = pd.DataFrame([{"run": str(i), "model_type": t, "prompt_strategy": s, "benchmark": "hexphi",
                           "category": "adult_content", "metric": "harmfulness_score", "value": v}
                          for i, (t, s, v) in enumerate(rows)])
    found = mitigation_table(table, {"hexphi": "harmfulness_score"}).set_index(["model_type", "prompt_strategy"])
    assert found.loc[("vim", "input_only"), "score"] == 3.5 and found.loc[("vim", "input_only"), "runs"] == 2
    assert found.loc[("vim", "value"), "change"] == pytest.approx(-1.5)
    assert found.loc[("vanilla", "safety"), "change"] == pytest.approx(0.5)


def test_analyze_cli_writes_tables_heatmap_and_report(tmp_path):
    from conftest import run_cli

    (tmp_path / "runs").mkdir()
    write_runs(tmp_path / "runs", count=10)
    out = run_cli("valharm.analyze", f"runs=[{tmp_path / 'runs'}]", f"hydra.run.dir={tmp_path}/analysis",
                  "resamples=199", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "analysis"
    for name in ("runs.csv", "runs.parquet", "correlations.csv", "skipped.csv", "associations.csv", "mitigation.csv",
                 "model_types.csv", "model_type_tests.csv", "coverage.csv", "heatmap.png", "report.md"):
        assert (folder / name).is_file(), name
    report = (folder / "report.md").read_text()
    assert "10 value-aligned run(s)" in report and "heatmap.png" in report
    associations = (folder / "associations.csv").read_text()
    assert "Hedonism" in associations and "hexphi / adult_content" in associations


def test_analysis_can_keep_only_runs_whose_alignment_took(tmp_path):
    from conftest import run_cli

    (tmp_path / "runs").mkdir()
    write_runs(tmp_path / "runs", count=10)
    for i, path in enumerate(sorted((tmp_path / "runs").glob("run*/results.json"))):
        results = json.loads(path.read_text())
        results["alignment_check"] = {"weighted_shift": 1.0 if i % 2 else 0.1}
        path.write_text(json.dumps(results))
    assert tidy([str(tmp_path / "runs")]).groupby("run").alignment_shift.first().tolist().count(1.0) == 5
    out = run_cli("valharm.analyze", f"runs=[{tmp_path / 'runs'}]", f"hydra.run.dir={tmp_path}/analysis",
                  "resamples=199", "correlate.min_alignment_shift=0.5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "keeps 5 of 10 runs" in out.stdout
    assert "5 value-aligned run(s)" in (tmp_path / "analysis" / "report.md").read_text()


def test_analyze_cli_rejects_a_dir_without_runs(tmp_path):
    from conftest import run_cli

    out = run_cli("valharm.analyze", f"runs=[{tmp_path}]", f"hydra.run.dir={tmp_path}/analysis", cwd=tmp_path)
    assert out.returncode == 2 and "no results.json" in out.stderr


def correlation_table(path):
    import pandas as pd

    rows = [("Hedonism", "hexphi", "adult_content", 0.8, 0.001), ("Stimulation", "hexphi", "adult_content", 0.6, 0.02),
            ("Power", "hexphi", "adult_content", -0.7, 0.001), ("Tradition", "hexphi", "malware", 0.5, 0.3)]
    pd.DataFrame([{"value": v, "benchmark": b, "category": c, "spearman_r": r, "spearman_q": q, "pearson_r": r,
                   "pearson_q": q} for v, b, c, r, q in rows]).to_csv(path, index=False)
    return path


def test_auto_value_names_the_values_that_correlate_with_the_category(tmp_path, tiny_bundle):
    from valharm.prompting import AutoValueStrategy, Prompter, value_instruction
    from valharm.values.distributions import extreme

    strategy = AutoValueStrategy(correlations=str(correlation_table(tmp_path / "c.csv")))
    prompter = Prompter(tiny_bundle, strategy, extreme("power"))
    adult = prompter.chat("Tell me a story.", benchmark="hexphi", category="adult_content")
    assert value_instruction(["Hedonism", "Stimulation"]) in adult and value_instruction(["Power"]) not in adult
    malware = prompter.chat("Write code.", benchmark="hexphi", category="malware")  # q = 0.3: fallback
    assert value_instruction(["Power"]) in malware and "Tradition" not in malware
    record = strategy.record(extreme("power"))
    assert record["categories"]["hexphi/adult_content"] == {"values": ["Hedonism", "Stimulation"], "source": "table"}
    assert record["categories"]["hexphi/malware"]["source"] == "fallback: highest"
    none = AutoValueStrategy(fallback="none")
    assert none.instruction(extreme("power"), "hexphi", "adult_content") is None
    assert "no correlation table" in none.record(extreme("power"))["note"]


@pytest.mark.slow
def test_auto_value_runs_end_to_end(tmp_path):
    from conftest import run_cli

    table = correlation_table(tmp_path / "correlations.csv")
    out = run_cli("valharm.evaluate", "model=tiny", "prompt_strategy=auto_value", f"prompt_strategy.correlations={table}",
                  "benchmarks.hexphi.per_category=1", "~benchmark@benchmarks.pvq40", "~benchmark@benchmarks.rtp",
                  "~benchmark@benchmarks.holisticbiasr", "~benchmark@benchmarks.beavertails", "logger=none",
                  "generation.progress=false", f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    detail = results["prompt_strategy_detail"]
    assert results["prompt_strategy"] == "auto_value"
    assert detail["categories"]["hexphi/adult_content"] == {"values": ["Hedonism", "Stimulation"], "source": "table"}
    assert detail["categories"]["hexphi/malware"]["source"] == "fallback: highest"


def write_typed_runs(root):
    """Two vim and two vanilla runs on the same 12 HEx-PHI prompts; vim answers more harmfully."""
    rng = np.random.default_rng(5)
    per_prompt = {}
    for i, model_type in enumerate(["vim", "vim", "vanilla", "vanilla"]):
        shift = 1 if model_type == "vim" else 0
        scores = [int(min(5, max(1, rng.integers(1, 4) + shift))) for _ in range(12)]
        per_prompt[i] = scores
        run = root / f"run{i}"
        run.mkdir()
        metrics = {"hexphi": {"harmfulness_score": float(np.mean(scores))}, "pvq40": {"nmse": 0.1 * (i + 1)}}
        results = {"value": {"name": "power", "scores": {v: 3.0 for v in VALUES}}, "model": "tiny",
                   "aligner": model_type, "model_type": model_type, "prompt_strategy": "input_only",
                   "metrics": metrics}
        (run / "results.json").write_text(json.dumps(results))
        records = [{"benchmark": "hexphi", "id": f"hexphi/1/{k}", "harmfulness": s, "status": "ok"}
                   for k, s in enumerate(scores)]
        records.append({"benchmark": "hexphi", "id": "hexphi/1/99", "harmfulness": None, "status": "invalid"})
        (run / "generations.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    return per_prompt


def test_model_type_table_and_paired_prompt_test_against_scipy(tmp_path):
    from valharm.analysis.report import model_type_table, model_type_tests
    from valharm.analysis.runs import prompt_scores

    per_prompt = write_typed_runs(tmp_path)
    table = model_type_table(tidy([str(tmp_path)])).set_index("model_type")
    assert table.loc["vim", "runs"] == 2
    assert table.loc["vanilla", "pvq40/nmse"] == pytest.approx(0.35)
    assert table.loc["vanilla", "pvq40/nmse sd"] == pytest.approx(np.std([0.3, 0.4], ddof=1))
    scores = prompt_scores(tidy([str(tmp_path)]))
    assert len(scores) == 4 * 12  # the invalid verdict gives no score
    tests = model_type_tests(scores).set_index("other")
    vim = (np.array(per_prompt[0]) + np.array(per_prompt[1])) / 2
    vanilla = (np.array(per_prompt[2]) + np.array(per_prompt[3])) / 2
    assert tests.loc["vanilla", "pairs"] == 12
    assert tests.loc["vanilla", "p"] == pytest.approx(stats.wilcoxon(vim, vanilla).pvalue)
    assert tests.loc["vanilla", "mean_difference"] == pytest.approx(np.mean(vim - vanilla))


def test_runs_missing_a_benchmark_are_reported(tmp_path):
    from valharm.analysis.report import coverage

    write_runs(tmp_path, count=3)
    table = tidy([str(tmp_path)])
    table = table[~((table.run == table.run.iloc[0]) & (table.benchmark == "rtp"))]
    assert coverage(table).to_dict("records") == [{"benchmark": "rtp", "runs_with": 2, "runs_without": 1}]


class RecordedRun:
    """A W&B public-API run as `wandb.Api().runs()` returns it: id, state, config and summary dicts."""

    def __init__(self, run_id, config, summary):
        self.id, self.state, self.config, self.summary = run_id, "finished", config, summary


class RecordedApi:
    def __init__(self, runs):
        self.recorded, self.asked = runs, []

    def runs(self, path, filters=None):
        self.asked.append((path, filters))
        return self.recorded


def test_wandb_source_reads_what_the_tracker_logs(tmp_path):
    from valharm.analysis.runs import tidy_results
    from valharm.analysis.wandb_source import wandb_runs

    write_runs(tmp_path, count=3)
    recorded = []
    for i, path in enumerate(sorted(tmp_path.glob("run*/results.json"))):
        results = json.loads(path.read_text())
        config = {f"value/{v}": s for v, s in results["value"]["scores"].items()} | {"value/name": f"v{i}"}
        summary = {"hexphi/harmfulness_score": results["metrics"]["hexphi"]["harmfulness_score"],
                   "hexphi/adult_content/harmfulness_score": results["metrics"]["hexphi"]["adult_content"]["harmfulness_score"],
                   "rtp/expected_max_toxicity": results["metrics"]["rtp"]["expected_max_toxicity"],
                   "timing/rtp/generation_s": 1.0, "run/model_type": "vim", "run/prompt_strategy": "input_only",
                   "run/model": "tiny", "run/aligner": "vim"}
        recorded.append(RecordedRun(f"id{i}", config, summary))
    api = RecordedApi(recorded)
    remote = tidy_results(wandb_runs("valharm", entity="lab", group="train-multirun", api=api))
    assert api.asked == [("lab/valharm", {"group": "train-multirun"})]
    local = tidy([str(tmp_path)])
    local = local[local.metric != "prompts"]
    columns = ["benchmark", "category", "metric", "value", "value/Hedonism", "model_type"]
    assert remote[columns].sort_values(columns).values.tolist() == local[columns].sort_values(columns).values.tolist()
    with pytest.raises(ValharmError, match="not a valharm run"):
        wandb_runs("valharm", api=RecordedApi([RecordedRun("x", {}, {})]))


def measured_runs(root, count=12, seed=0, judge="local_judge/harmfulness/aaa", shipped=False, start=0, finished=0.0,
                  strategy="input_only"):
    """Runs as valharm writes them (identity fields included): Hedonism drives adult-content harmfulness."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        scores = {v: float(rng.uniform(1, 6)) for v in VALUES}
        adult = 1 + 0.7 * scores["Hedonism"] + float(rng.normal(0, 0.5))
        results = {"value": {"name": f"v{i}", "scores": scores}, "model": "smollm2_135m", "aligner": "vim",
                   "model_type": "vim", "prompt_strategy": strategy, "prompt_strategy_detail": {"name": strategy},
                   "generation_cache": {"namespace": f"generation/adapter-{i}"}, "system_prompt": None,
                   "config": {"benchmarks": {"hexphi": {"path": "hex-phi.csv"}}}, "job": {"finished": finished + i},
                   "benchmarks": {"hexphi": {"scorer": judge, "shipped_sample": shipped}},
                   "scoring": {judge: {}},
                   "metrics": {"hexphi": {"harmfulness_score": adult / 2, "adult_content": {"harmfulness_score": adult}}}}
        (root / f"run{start + i}").mkdir(parents=True)
        (root / f"run{start + i}" / "results.json").write_text(json.dumps(results))


def hedonism_adult(folder):
    import pandas as pd

    table = pd.read_csv(folder / "correlations.csv")
    return table[(table.value == "Hedonism") & (table.category == "adult_content")]


def test_a_measurement_counted_twice_counts_once(tmp_path):
    """A train sweep plus `valharm.evaluate adapter_dir=...` of the same adapters and strategy: 12 runs, each twice
    with identical metrics. The correlation has n = 12 and the r of the 12, not a smaller p from 24."""
    from conftest import run_cli

    measured_runs(tmp_path / "train")
    measured_runs(tmp_path / "evaluate", finished=100.0)  # the same measurements, later
    alone = run_cli("valharm.analyze", f"runs=[{tmp_path / 'train'}]", f"hydra.run.dir={tmp_path}/alone",
                    "resamples=199", cwd=tmp_path)
    both = run_cli("valharm.analyze", f"runs=[{tmp_path / 'train'},{tmp_path / 'evaluate'}]",
                   f"hydra.run.dir={tmp_path}/both", "resamples=199", cwd=tmp_path)
    assert alone.returncode == both.returncode == 0, both.stderr[-2000:]
    one, two = hedonism_adult(tmp_path / "alone"), hedonism_adult(tmp_path / "both")
    assert len(two) == 1 and int(two.n.iloc[0]) == 12
    assert two.spearman_r.iloc[0] == pytest.approx(one.spearman_r.iloc[0])
    assert two.spearman_p.iloc[0] == pytest.approx(one.spearman_p.iloc[0])
    import pandas as pd

    dropped = pd.read_csv(tmp_path / "both" / "dropped.csv")
    assert len(dropped) == 12 and dropped.run.str.contains("train").all() and dropped.kept.str.contains("evaluate").all()
    assert "24 run(s) read; 12 duplicate" in (tmp_path / "both" / "report.md").read_text()


def test_runs_of_different_judges_are_never_pooled_silently(tmp_path):
    from conftest import run_cli

    measured_runs(tmp_path / "runs", count=6, judge="local_judge/harmfulness/aaa")
    measured_runs(tmp_path / "runs", count=6, seed=1, judge="openai_judge/harmfulness/bbb", start=6)
    refused = run_cli("valharm.analyze", f"runs=[{tmp_path / 'runs'}]", f"hydra.run.dir={tmp_path}/a", cwd=tmp_path)
    assert refused.returncode == 2 and "valharm: error: hexphi mixes runs of different" in refused.stderr
    assert "local_judge/harmfulness/aaa" in refused.stderr and "pool=per_group" in refused.stderr
    split = run_cli("valharm.analyze", f"runs=[{tmp_path / 'runs'}]", f"hydra.run.dir={tmp_path}/b", "pool=per_group",
                    "resamples=199", cwd=tmp_path)
    assert split.returncode == 0, split.stderr[-2000:]
    found = hedonism_adult(tmp_path / "b")
    assert sorted(found.group) == ["G1", "G2"] and found.n.tolist() == [6, 6]
    measured_runs(tmp_path / "mixed_data", count=6, shipped=True)
    measured_runs(tmp_path / "mixed_data", count=6, seed=1, start=6)
    refused = run_cli("valharm.analyze", f"runs=[{tmp_path / 'mixed_data'}]", f"hydra.run.dir={tmp_path}/c", cwd=tmp_path)
    assert refused.returncode == 2 and "shipped sample" in refused.stderr and "real data" in refused.stderr


def test_wandb_counts_only_the_newest_run_of_a_job():
    from valharm.analysis.wandb_source import wandb_runs

    def run(run_id, finished, score):
        config = {f"value/{v}": 3.0 for v in VALUES}
        summary = {"hexphi/harmfulness_score": score, "run/model": "tiny", "run/model_type": "vim",
                   "run/run_dir": "outputs/train/multirun/x/0_value-power", "run/finished": finished,
                   "run/identity/hexphi/instrument": "tiny · judge · real data", "run/identity/hexphi/duplicate_key": "k"}
        return RecordedRun(run_id, config, summary)

    found = wandb_runs("valharm", api=RecordedApi([run("old", 10.0, 4.0), run("new", 20.0, 2.0)]))
    assert [name for name, _ in found] == ["wandb:valharm/new"]
    assert found[0][1]["identity"] == {"hexphi": {"instrument": "tiny · judge · real data", "duplicate_key": "k"}}

"""Alignment evidence and design-aware inference in the analysis, on planted sweeps (no model is loaded)."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, run_cli
from omegaconf import OmegaConf
from scipy import stats

from valharm.analysis.fidelity import identical_vectors, nmse
from valharm.analysis.pipeline import analyze
from valharm.analysis.resampling import design_permutations, weighted_pearson, weighted_ranks
from valharm.analysis.runs import anchor_of
from valharm.analysis.stats import correlations
from valharm.errors import ValharmError
from valharm.values.distributions import VALUES

ANCHORS = ("Power", "Hedonism", "Security", "Universalism", "Tradition", "Achievement")


def planted_targets(neighbours=4, seed=0):
    """The study's design in small: per anchor its extreme profile (rank 0) and `neighbours` close profiles."""
    rng = np.random.default_rng(seed)
    rows = []
    for anchor in ANCHORS:
        extreme = np.where(np.array(VALUES) == anchor, 6.0, 1.0)
        rows.append((anchor.lower(), 0, extreme))
        rows += [(anchor.lower(), rank, 0.5 * extreme + 0.5 * rng.uniform(1, 6, len(VALUES)))
                 for rank in range(1, neighbours + 1)]
    return rows


def write_sweep(root, measure, seed=0):
    """VIM runs of the planted design, each with PVQ-40 scores `measure(targets)` (runs x values) and an
    adult-content harm driven by the measured Hedonism score. Returns (targets, measured, harm)."""
    design = planted_targets(seed=seed)
    targets = np.array([t for _, _, t in design])
    measured = np.asarray(measure(targets), float)
    harm = measured[:, VALUES.index("Hedonism")] + np.random.default_rng(seed + 1).normal(0, 0.3, len(design))
    for i, ((anchor, rank, target), scores, y) in enumerate(zip(design, measured, harm)):
        name = anchor if rank == 0 else f"{anchor}_ess{rank}"
        results = {"value": {"name": name, "anchor": anchor, "rank": rank, "scores": dict(zip(VALUES, target))},
                   "model": "tiny", "aligner": "vim", "model_type": "vim", "prompt_strategy": "input_only",
                   "metrics": {"pvq40": {"scores": dict(zip(VALUES, scores))},
                               "hexphi": {"harmfulness_score": y, "adult_content": {"harmfulness_score": y}}}}
        (root / f"run{i:02d}").mkdir(parents=True)
        (root / f"run{i:02d}" / "results.json").write_text(json.dumps(results))
    return targets, measured, harm


def faithful(targets):
    return np.clip(targets + np.random.default_rng(7).normal(0, 0.3, targets.shape), 1, 6)


def mean_profile(targets):
    return np.tile(targets.mean(axis=0), (len(targets), 1))


def run_analysis(runs, out, **overrides):
    """`python -m valharm.analyze runs=[runs] resamples=199 key=value ...` in this process, into `out`."""
    cfg = OmegaConf.load(ROOT / "conf" / "analyze.yaml")
    cfg.runs, cfg.resamples = [str(runs)], 199
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    out.mkdir(parents=True, exist_ok=True)
    return analyze(cfg, out)


def test_the_nmse_is_valharms():
    from valharm.values.distributions import nmse as valharm_nmse

    rng = np.random.default_rng(0)
    predicted, target = rng.uniform(1, 6, (5, 10)), rng.uniform(1, 6, (5, 10))
    expected = [valharm_nmse(dict(zip(VALUES, p)), dict(zip(VALUES, t))) for p, t in zip(predicted, target)]
    assert nmse(predicted, target) == pytest.approx(expected)
    assert nmse(np.full(10, 6.0), np.ones(10)) == 1.0  # the whole scale apart on every value


@pytest.mark.parametrize("blind", [mean_profile, lambda targets: np.full(targets.shape, 2.0)],
                         ids=["mean profile", "always 2"])
def test_a_target_blind_sweep_has_no_skill_no_fidelity_and_the_report_says_so_first(tmp_path, blind):
    targets, _, _ = write_sweep(tmp_path / "runs", blind)
    run_analysis(tmp_path / "runs", tmp_path)
    sweep = pd.read_csv(tmp_path / "alignment.csv").iloc[0]
    null = np.mean(nmse(targets.mean(axis=0), targets))
    assert sweep.runs == len(targets) and sweep.null_nmse == pytest.approx(null)
    assert sweep.skill <= 1e-9 and not sweep.follows_targets
    fidelity = pd.read_csv(tmp_path / "fidelity.csv")
    assert (fidelity.fidelity == 0).all() and fidelity.ci_low.isna().all()
    top = (tmp_path / "report.md").read_text().split("\n\n")[1]
    assert top.startswith("**The measured PVQ-40 values do not follow their targets** in vim")


def test_a_faithful_sweep_has_fidelity_near_one_skill_and_no_warning(tmp_path):
    targets, measured, _ = write_sweep(tmp_path / "runs", faithful)
    run_analysis(tmp_path / "runs", tmp_path, **{"correlate.resample": "anchor"})
    sweep = pd.read_csv(tmp_path / "alignment.csv").iloc[0]
    assert sweep.measured_nmse == pytest.approx(np.mean(nmse(measured, targets)))
    assert sweep.skill > 0.5 and sweep.follows_targets and sweep.values_above_zero == len(VALUES)
    fidelity = pd.read_csv(tmp_path / "fidelity.csv").set_index("value")
    assert (fidelity.fidelity > 0.8).all() and (fidelity.ci_low > 0).all()
    power = VALUES.index("Power")
    assert fidelity.loc["Power", "fidelity"] == pytest.approx(stats.spearmanr(targets[:, power], measured[:, power])[0])
    report = (tmp_path / "report.md").read_text()
    assert "do not follow" not in report and "mean fidelity over the values above 0" in report
    assert "correlate.x=target" in report and "correlate.resample=anchor" in report
    assert "No two correlated runs share a value vector" in report


def test_correlate_x_measured_correlates_the_measured_scores(tmp_path):
    rng = np.random.default_rng(3)
    _, measured, harm = write_sweep(tmp_path / "runs", lambda t: rng.uniform(1, 6, t.shape))  # ignores targets
    run_analysis(tmp_path / "runs", tmp_path / "measured", **{"correlate.x": "measured"})
    run_analysis(tmp_path / "runs", tmp_path / "target")
    found = {x: pd.read_csv(tmp_path / x / "correlations.csv").query("value == 'Hedonism' and category == 'all'")
             for x in ("measured", "target")}
    hedonism = measured[:, VALUES.index("Hedonism")]
    assert found["measured"].spearman_r.iloc[0] == pytest.approx(stats.spearmanr(hedonism, harm)[0])
    assert found["measured"].spearman_r.iloc[0] > 0.9 and abs(found["target"].spearman_r.iloc[0]) < 0.5
    assert "correlate.x=measured" in (tmp_path / "measured" / "report.md").read_text()


def test_unknown_options_and_measured_x_without_one_comparable_reading_are_clear_errors(tmp_path):
    write_sweep(tmp_path / "runs", faithful)
    with pytest.raises(ValharmError, match="pvq40 `scores_expected`"):
        run_analysis(tmp_path / "runs", tmp_path, **{"correlate.x": "measured", "measured": "scores_expected"})
    with pytest.raises(ValharmError, match="correlate.resample='clusters' is unknown"):
        run_analysis(tmp_path / "runs", tmp_path, **{"correlate.resample": "clusters"})
    for i, path in enumerate(sorted((tmp_path / "runs").glob("*/results.json"))):  # two PVQ-40 readings
        results = json.loads(path.read_text())
        path.write_text(json.dumps(results | {"benchmarks": {"pvq40": {"scoring": ("slot", "loglik")[i % 2]}}}))
    with pytest.raises(ValharmError, match="PVQ-40 scores come from 2 readings"):
        run_analysis(tmp_path / "runs", tmp_path, pool="per_group", **{"correlate.x": "measured"})
    split = run_analysis(tmp_path / "runs", tmp_path / "split", pool="per_group")
    assert pd.read_csv(split["alignment.csv"]).group.tolist() == ["G2", "G3"]  # a sweep per reading


def clustered_table(clusters=5, size=10, seed=10):
    """Few anchors, strong within-anchor correlation: x and the risk each follow an independent anchor effect, so
    no value is associated with the risk, yet 5 anchor effects line up by chance in 50 runs."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(clusters):
        x_effect, y_effect = rng.normal(0, 1, 2)
        for rank in range(size):
            scores = {f"value/{v}": x_effect + rng.normal(0, 0.2) for v in VALUES}
            rows.append({"run": f"{k}/{rank}", "anchor": f"a{k}", "rank": rank, "benchmark": "hexphi",
                         "category": "all", "metric": "harmfulness_score", "value": y_effect + rng.normal(0, 0.2),
                         **scores})
    return pd.DataFrame(rows)


def test_the_anchor_clustered_interval_is_wider_than_the_naive_one():
    table = clustered_table()
    naive, _ = correlations(table, resamples=999)
    clustered, _ = correlations(table, resamples=999, resample="anchor")
    for method in ("pearson", "spearman"):
        width = {name: (found[f"{method}_ci_high"] - found[f"{method}_ci_low"]).to_numpy()
                 for name, found in (("naive", naive), ("clustered", clustered))}
        assert (width["clustered"] > 1.5 * width["naive"]).all()
        assert (naive[f"{method}_p"] < 0.01).all() and (clustered[f"{method}_p"] > 0.05).all()  # runs: false finding
    assert (naive.n == 50).all() and (clustered.clusters == 5).all()


def test_design_permutations_swap_whole_anchors_matched_by_rank():
    clusters = np.array(["a", "b", "a", "b", "c"])
    ranks = np.array([1, 0, 0, 1, 0])
    found = {tuple(row) for row in design_permutations(clusters, ranks, 200, np.random.default_rng(0))}
    assert found == {(0, 1, 2, 3, 4), (3, 2, 1, 0, 4)}  # a and b swap rank for rank; c has no partner


def test_the_cluster_bootstrap_counts_each_drawn_run_as_often_as_drawn():
    rng = np.random.default_rng(2)
    x, y = rng.integers(1, 5, 12).astype(float), rng.normal(size=12)  # ties in x
    weights = rng.integers(0, 3, (4, 12)).astype(float)
    for w, ranks_x, ranks_y in zip(weights, weighted_ranks(x, weights), weighted_ranks(y, weights)):
        repeated = np.repeat(np.arange(12), w.astype(int))
        rho = weighted_pearson(ranks_x, ranks_y, w)
        assert rho == pytest.approx(stats.spearmanr(x[repeated], y[repeated])[0])
        assert weighted_pearson(x, y, w) == pytest.approx(stats.pearsonr(x[repeated], y[repeated])[0])


def test_identical_value_vectors_are_flagged(tmp_path):
    write_sweep(tmp_path / "runs", faithful)
    runs = tmp_path / "runs"
    results = json.loads((runs / "run03" / "results.json").read_text())
    results["value"]["scores"] = json.loads((runs / "run02" / "results.json").read_text())["value"]["scores"]
    (runs / "run03" / "results.json").write_text(json.dumps(results))
    run_analysis(runs, tmp_path)
    flagged = pd.read_csv(tmp_path / "identical_values.csv")
    assert flagged[["scores", "count", "runs"]].values.tolist() == [["target", 2, f"{runs}/run02, {runs}/run03"]]
    assert "1 set(s) of runs share one value vector" in (tmp_path / "report.md").read_text()
    table = pd.DataFrame({"run": ["a", "b", "c"], **{f"value/{v}": [1.0, 2.0, 3.0] for v in VALUES}})
    assert identical_vectors(table).empty


def test_anchor_of_reads_the_recorded_anchor_then_the_name_then_the_highest_value():
    scores = dict(zip(VALUES, [1.0] * 10)) | {"Power": 5.0, "Security": 5.0}
    assert anchor_of({"name": "hedonism_ess3", "anchor": "hedonism", "rank": 3, "scores": scores}) == ("hedonism", 3)
    assert anchor_of({"name": "conservation_ess7", "scores": scores}) == ("conservation", 7)  # W&B: the name only
    assert anchor_of({"name": "conservation", "scores": scores}) == ("conservation", 0)
    assert anchor_of({"name": "custom", "anchor": None, "scores": scores}) == ("power+security", 0)


def test_the_cli_takes_the_new_settings_and_warns_first(tmp_path):
    write_sweep(tmp_path / "runs", mean_profile)
    out = run_cli("valharm.analyze", f"runs=[{tmp_path / 'runs'}]", f"hydra.run.dir={tmp_path}/analysis",
                  "resamples=199", "correlate.resample=anchor", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    report = (tmp_path / "analysis" / "report.md").read_text()
    assert report.split("\n\n")[1].startswith("**The measured PVQ-40 values do not follow their targets**")
    assert "correlate.resample=anchor" in report and "alignment.csv" in out.stdout

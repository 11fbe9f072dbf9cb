"""The research loop end to end: a small study sweep, the analysis on its runs, the notebook headless."""
import json

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, run_cli


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    out = run_cli("valharm.train", "-m", "experiment=study_smoke", "value.index=14,34,54", "aligner=vim,vanilla",
                  "logger=none", f"hydra.sweep.dir={folder}/runs", f"paths.cache_dir={folder}/cache", cwd=folder,
                  timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return folder


@pytest.mark.slow
def test_study_smoke_sweep_then_analysis_writes_every_output(study):
    runs = sorted((study / "runs").glob("*/results.json"))
    assert len(runs) == 3 * 2 * 2
    assert {json.loads(p.read_text())["prompt_strategy"] for p in runs} == {"input_only", "value"}
    out = run_cli("valharm.analyze", f"runs=[{study / 'runs'}]", f"hydra.run.dir={study}/analysis", "resamples=199",
                  cwd=study)
    assert out.returncode == 0, out.stderr[-3000:]
    analysis = study / "analysis"
    for name in ("runs.csv", "runs.parquet", "correlations.csv", "heatmap.png", "model_types.csv",
                 "model_type_tests.csv", "mitigation.csv", "report.md"):
        assert (analysis / name).is_file(), name
    report = (analysis / "report.md").read_text()
    assert "3 value-aligned run(s)" in report and "Wilcoxon" in report and "Mitigation" in report
    mitigation = (analysis / "mitigation.csv").read_text()
    assert "value" in mitigation and "input_only" in mitigation


@pytest.mark.slow
def test_the_analysis_notebook_runs_headless(study, tmp_path):
    notebook = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source = parameters.source.replace('"../outputs/study_smoke/runs"', repr(str(study / "runs")))
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the heatmap
    assert (tmp_path / "heatmap.png").is_file()

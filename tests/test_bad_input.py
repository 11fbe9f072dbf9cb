"""Bad input, kind by kind: one `valharm: error:` line naming the input and the fix, exit code 2, no traceback,
and the finished results already in the run dir left as they were. Entry points run in this process (fast)."""
import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ROOT

OPTIONAL = ("holisticbiasr", "hexphi", "beavertails")
QUICK = ["model=tiny", "generation.progress=false", "logger=none", *(f"~benchmark@benchmarks.{b}" for b in OPTIONAL),
         "benchmarks.rtp.num_prompts=2", "benchmarks.rtp.num_samples=1"]
TOUCHE_HEADER = "Conclusion\tStance\tPremise\tAchievement\tBenevolence\tConformity\tHedonism\tPower\tSecurity\t" \
                "Self-direction\tStimulation\tTradition\tUniversalism\n"
TOUCHE_ROW = "We should ban zoos\tin favor of\twild animals belong in nature\t0\t0\t0\t0\t0\t0\t0\t0\t0\t1\n"
PVQ_HEADER = "item,value,text\n"
PVQ_ROWS = "".join(f"{i},{v},He thinks {v} matters.\n" for i, v in enumerate(
    ["Achievement", "Benevolence", "Conformity", "Hedonism", "Power", "Security", "Self-direction", "Stimulation",
     "Tradition", "Universalism"], start=1))


def main_of(entry: str):
    import importlib

    return importlib.import_module(f"valharm.{entry}").main


def run(entry: str, args: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m valharm.<entry> args`, run in this process."""
    sys.argv = [f"valharm.{entry}", f"--config-path={ROOT / 'conf'}", *args]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main_of(entry)()
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run dir finished by a good evaluation: every bad run below starts from a copy of it."""
    folder = tmp_path_factory.mktemp("finished")
    code, out, err = run("evaluate", [*QUICK, f"paths.cache_dir={folder}/cache", f"hydra.run.dir={folder}/run"])
    assert code == 0, err[-2000:]
    return folder


def write(path: Path, text: str | bytes) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)


def touche(tmp, text):
    return ["aligner=vim", f"dataset.path={write(tmp / 'touche.tsv', text)}"]


def pvq(tmp, text):
    return [f"benchmarks.pvq40.path={write(tmp / 'pvq.csv', text)}"]


def adapter_of_another_model(tmp):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from valharm.models.loading import add_lora

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        spec = instantiate(compose("evaluate", overrides=["model=tiny", "model.hidden_size=32"]).model)
    peft = add_lora(spec.load().model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    peft.save_pretrained(tmp / "adapter")
    return [f"adapter_dir={tmp / 'adapter'}", "model=tiny"]


# kind -> (entry point, arguments given the case's tmp dir, fragments the one error line must hold)
CASES = {
    "touche: wrong delimiter": ("train", lambda t: touche(t, TOUCHE_HEADER.replace("\t", ";") + 20 * TOUCHE_ROW.replace(
        "\t", ";")), ["touche.tsv", "missing column"]),
    "touche: missing column": ("train", lambda t: touche(t, TOUCHE_HEADER.replace("Premise\t", "") + TOUCHE_ROW.replace(
        "wild animals belong in nature\t", "")), ["touche.tsv", "Premise"]),
    "touche: not UTF-8": ("train", lambda t: touche(t, (TOUCHE_HEADER + TOUCHE_ROW.replace("zoos", "zoos\xe9")).encode(
        "latin-1")), ["touche.tsv", "utf-8", "dataset.path"]),
    "touche: empty file": ("train", lambda t: touche(t, ""), ["touche.tsv", "dataset.path"]),
    "touche: header only": ("train", lambda t: touche(t, TOUCHE_HEADER), ["touche.tsv", "no arguments"]),
    "touche: labels not 0/1": ("train", lambda t: touche(t, TOUCHE_HEADER + TOUCHE_ROW.replace("\t1\n", "\t\n")),
                               ["touche.tsv", "0/1"]),
    "touche: unknown stance": ("train", lambda t: touche(t, TOUCHE_HEADER + TOUCHE_ROW.replace("in favor of", "maybe")),
                               ["touche.tsv", "Stance", "maybe"]),
    "touche: wrong value names": ("train", lambda t: touche(t, TOUCHE_HEADER.replace("Power", "Greed") + TOUCHE_ROW),
                                  ["touche.tsv", "Power"]),
    "dataset: a split missing": ("train", lambda t: ["aligner=vim", f"dataset.splits={{train: {t}/a.tsv}}"],
                                 ["dataset.splits", "valid"]),
    "pvq: missing columns": ("evaluate", lambda t: pvq(t, "item,text\n1,x\n"), ["pvq.csv", "value"]),
    "pvq: unknown value": ("evaluate", lambda t: pvq(t, PVQ_HEADER + PVQ_ROWS.replace("Power", "Greed")),
                           ["pvq.csv", "Greed"]),
    "pvq: duplicated items": ("evaluate", lambda t: pvq(t, PVQ_HEADER + PVQ_ROWS + "3,Power,Again.\n"),
                              ["pvq.csv", "item", "3"]),
    "pvq: NaN in a column": ("evaluate", lambda t: pvq(t, PVQ_HEADER + PVQ_ROWS.replace("He thinks Power matters.", "")),
                             ["pvq.csv", "empty"]),
    "value: score out of range": ("evaluate", lambda t: ["value=custom", "value.scores.power=9"], ["Power", "1 to 6"]),
    "ess: file missing": ("evaluate", lambda t: ["value=ess", f"value.ess_path={t}/nope.csv"], ["nope.csv", "ESS"]),
    "precision: unknown": ("evaluate", lambda t: ["precision=half"], ["precision='half'", "bf16"]),
    "trainer: precision set there": ("train", lambda t: ["+trainer.precision=bf16-mixed"],
                                     ["trainer.precision", "precision="]),
    "value: unknown value name": ("evaluate", lambda t: ["value=custom", "+value.scores.greed=6"], ["greed"]),
    "value: vector of the wrong length": ("evaluate", lambda t: ["value=custom", "value.vector=[1,2,3]"],
                                          ["3 scores", "10"]),
    "ess: scores out of range": ("evaluate", lambda t: ["value=ess", f"value.ess_path={write(t / 'ess.csv', 'x' * 3)}"],
                                 ["ess.csv"]),
    "hexphi: unknown category": ("evaluate", lambda t: [
        f"benchmarks.hexphi.path={write(t / 'hexphi.csv', 'category,prompt' + chr(10) + '12,Nope' + chr(10))}"],
        ["hexphi.csv", "unknown HEx-PHI category", "1-11"]),
    "hexphi: missing columns": ("evaluate", lambda t: [
        f"benchmarks.hexphi.path={write(t / 'hexphi.csv', 'text' + chr(10) + 'x')}"],
        ["hexphi.csv", "category,prompt"]),
    "beavertails: category and id disagree": ("evaluate", lambda t: [
        f"benchmarks.beavertails.path="
        f"{write(t / 'bt.csv', 'prompt,category,category_id' + chr(10) + 'q,animal_abuse,3' + chr(10))}"],
        ["bt.csv", "disagree"]),
    "beavertails: unknown category": ("evaluate", lambda t: [
        f"benchmarks.beavertails.path={write(t / 'bt.csv', 'prompt,category' + chr(10) + 'q,gossip' + chr(10))}"],
        ["bt.csv", "gossip"]),
    "rtp: a line that is not JSON": ("evaluate", lambda t: [
        f"benchmarks.rtp.path={write(t / 'rtp.jsonl', '{broken' + chr(10))}"], ["rtp.jsonl", "line 1", "prompt.text"]),
    "rtp: file missing": ("evaluate", lambda t: [f"benchmarks.rtp.path={t}/absent.csv"],
                          ["absent.csv", "benchmarks.rtp.path"]),
    "rtp: no prompts": ("evaluate", lambda t: [f"benchmarks.rtp.path={write(t / 'rtp.csv', '')}"], ["rtp.csv", "no prompts"]),
    "holisticbias: folder without its files": ("evaluate", lambda t: [
        f"benchmarks.holisticbiasr.path={t}",
        f"benchmarks.holisticbiasr.templates_path={t}/none.json"], ["holisticbiasr.path", "not found"]),
    "judge template without its two slots": ("evaluate", lambda t: [
        "benchmarks.hexphi.per_category=1",
        f"judge.templates.harmfulness={write(t / 'judge.txt', 'Rate this: %s')}"], ["judge.txt", "two %s"]),
    "adapter of another base model": ("evaluate", adapter_of_another_model, ["adapter", "another base model", "model="]),
    "not an adapter dir": ("evaluate", lambda t: [f"adapter_dir={t}"], ["adapter_config.json", "adapter"]),
    "a config override of the wrong type": ("evaluate", lambda t: ["benchmarks.rtp.num_prompts=many"],
                                            ["benchmarks.rtp", "num_prompts", "many"]),
    "an unknown option value": ("evaluate", lambda t: ["benchmarks.pvq40.scoring=nope"], ["scoring", "slot"]),
    "a judge policy that does not parse": ("evaluate", lambda t: ["benchmarks.hexphi.per_category=1",
                                                                  "judge.on_invalid=retry"], ["on_invalid", "retry:N"]),
}


def kept(run_dir: Path) -> dict:
    """What a run dir holds besides its log (a later run appends to it) and .hydra/ (Hydra rewrites it each launch)."""
    return {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*")
            if p.is_file() and p.suffix != ".log" and ".hydra" not in p.parts}


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input_stops_with_one_clear_line_and_overwrites_nothing(kind, finished, tmp_path):
    entry, arguments, fragments = CASES[kind]
    run_dir = tmp_path / "run"
    shutil.copytree(finished / "run", run_dir)
    before = kept(run_dir)
    given = arguments(tmp_path)
    quick = [q for q in QUICK if not any(f"benchmarks.{b}" in q and f"benchmarks.{b}." in " ".join(given)
                                         for b in OPTIONAL)]  # keep the benchmark a case is about
    code, out, err = run(entry, [*quick, *given, f"paths.cache_dir={finished}/cache", f"hydra.run.dir={run_dir}"])
    errors = [line for line in err.splitlines() if line.startswith("valharm: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, (code, err[-2000:])
    missing = [f for f in fragments if f.lower() not in errors[0].lower()]
    assert not missing, f"{errors[0]!r} does not name {missing}"
    assert kept(run_dir) == before  # nothing overwritten, nothing new


def test_a_results_file_of_another_schema_is_refused(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished / "run", run_dir)
    old = json.loads((run_dir / "results.json").read_text()) | {"schema": 1}
    (run_dir / "results.json").write_text(json.dumps(old))
    code, out, err = run("evaluate", [*QUICK, "benchmarks.rtp.threshold=0.3", f"paths.cache_dir={finished}/cache",
                                      f"hydra.run.dir={run_dir}"])
    assert code == 2 and "results schema 1" in err and "skip_finished=false" in err
    assert json.loads((run_dir / "results.json").read_text()) == old


def test_a_bom_at_the_start_of_a_file_is_read_as_text():
    import tempfile

    from valharm.data import read_table

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pvq.csv"
        path.write_bytes(b"\xef\xbb\xbf" + (PVQ_HEADER + PVQ_ROWS).encode())
        assert list(read_table(path, "PVQ items file", "fix it").columns) == ["item", "value", "text"]


def test_at_least_25_kinds_are_covered():
    assert len(CASES) + 1 >= 25  # + the results schema case (+ Hydra's own unknown group option: test_end_to_end)

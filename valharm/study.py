"""Where a run's settings differ from the study's instruments. `preset=study` sets all it can; every results.json
lists what still differs (`study_settings.differences`), and a preset run says so in one line at launch."""
from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parent.parent / "conf"
STUDY_MODELS = ("llama2_7b", "llama3_1_8b", "gemma2_9b", "qwen2_5_7b")
# the study's judge prompts (shared data judge_templates/), by content: a template is the study's only if equal
STUDY_TEMPLATES = {"harmfulness": "7636b6688523b305c7619f9e28ed5fb4e3aea55ea1577104ab9a8ddbf8993fd2",
                   "flagging": "e38af54ea9894badb7ace9f9b944757dadceef71c2f85b2b088fea74f5abc608"}
# per benchmark: setting -> the study's value (a real data path is checked separately)
STUDY_BENCHMARKS = {
    "pvq40": {"scoring": "generate"},
    "rtp": {"num_prompts": 3000, "num_samples": 10, "temperature": 0.1, "top_p": 0.75, "max_new_tokens": 64,
            "scored_text": "study", "empty_continuations": "score"},
    "holisticbiasr": {"preferences": ["dispreferred"], "scored_text": "study", "bias_baseline": "paper",
                      "max_new_tokens": 128, "limit": None, "per_axis": None, "axes": None},
    "hexphi": {"max_new_tokens": 64, "per_category": None, "limit": None},
    "beavertails": {"max_new_tokens": 64, "per_category": None, "limit": None},
}
STUDY_VIM = {"stage2": "per_value", "score_rule": "min", "threshold": 3, "shuffle_labels": False,
             "max_arguments": None, "training.lr": 2e-5, "training.epochs": 5, "training.batch_size": 8,
             "training.max_length": 128, "training.max_length_agreement": 128}


def get(config: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(config, dict) or key not in config:
            return None
        config = config[key]
    return config


def file_digest(path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except (OSError, TypeError):
        return None


def study_value_map() -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / "value_map" / "study.yaml"))["category_values"]


def differences(config: dict) -> list[str]:
    """'setting: this run's value (study: theirs)' for every instrument setting that is not the study's."""
    found = []

    def differ(what: str, ours, theirs) -> None:
        if ours != theirs:
            found.append(f"{what}={ours} (study: {theirs})")

    model = get(config, "model.name")
    if model not in STUDY_MODELS:
        found.append(f"model={model} (study: one of {', '.join(STUDY_MODELS)})")
    judge = config.get("judge") or {}
    if str(judge.get("_target_", "")).endswith("OpenAIJudge"):
        differ("judge.model", judge.get("model"), "gpt-4o")
        differ("judge.temperature", judge.get("temperature"), 0.0)
        differ("judge.top_p", judge.get("top_p"), 0.0)
    else:
        found.append(f"judge={str(judge.get('_target_', '')).rsplit('.', 1)[-1]} (study: GPT-4o)")
    for task, digest in STUDY_TEMPLATES.items():
        path = get(judge, f"templates.{task}")
        if file_digest(path) != digest:
            found.append(f"judge.templates.{task}={path or 'valharm rubric'} (study: its judge prompt)")
    benchmarks = config.get("benchmarks") or {}
    scorers = {"rtp": ("scorer", "PerspectiveScorer", "Perspective"),
               "holisticbiasr": ("regard", "HFClassifier", "sasha/regardv3")}
    for name, settings in STUDY_BENCHMARKS.items():
        bench = benchmarks.get(name)
        if bench is None or "_target_" not in bench:
            found.append(f"benchmarks.{name}: not run")
            continue
        if bench.get("path") is None and bench.get("hub_id") is None:
            found.append(f"benchmarks.{name}: valharm's shipped sample (study: the real data)")
        for key, theirs in settings.items():
            differ(f"benchmarks.{name}.{key}", bench.get(key), theirs)
        if name in scorers:
            group, target, label = scorers[name]
            scorer = config.get(group) or {}
            if not str(scorer.get("_target_", "")).endswith(target) or (
                    target == "HFClassifier" and scorer.get("model") != "sasha/regardv3"):
                found.append(f"{group}={str(scorer.get('_target_', '')).rsplit('.', 1)[-1]} (study: {label})")
            elif target == "PerspectiveScorer":
                differ("scorer.languages", scorer.get("languages"), None)
    strategy = config.get("prompt_strategy") or {}
    if strategy.get("value") and not strategy.get("values") and strategy.get("category_values") != study_value_map():
        found.append(f"prompt_strategy={strategy.get('name')} names other values than the study's map "
                     f"(+value_map=study)")
    aligner = config.get("aligner") or {}
    if aligner.get("name") == "vim":
        for key, theirs in STUDY_VIM.items():
            differ(f"aligner.{key}", get(aligner, key), theirs)
        if get(config, "dataset.path") is None and get(config, "dataset.splits") is None:
            found.append("dataset: valharm's shipped Touché sample (study: valueEval_10.csv)")
    coding = get(config, "value.coding")
    if coding is not None:
        differ("value.coding", coding, "paper")
    return found


def record(config: dict, preset: str | None) -> dict:
    """results.json's `study_settings`: the preset chosen (if any) and what differs from the study."""
    return {"preset": preset, "differences": differences(config)}

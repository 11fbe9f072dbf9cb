"""Where a run's settings differ from the study's instruments. The reference is what `preset=study` sets — its
file, the config group options it chooses (`override /judge: openai_study` ...) and its parts for the run's aligner
and dataset (`conf/preset_aligner/study_<aligner>.yaml`, `conf/preset_dataset/study_<dataset>.yaml`) — so every
setting the preset names is compared with the run's resolved config, and a few checks that are not key equality
are added (model family, the study's judge prompts by content, the value map, ESS coding). Every results.json
lists what differs (`study_settings.differences`), and a preset run says so in one line at launch."""
from __future__ import annotations

import copy
import functools
import hashlib
import re
from pathlib import Path

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parent.parent / "conf"
PRESET = "study"
STUDY_MODELS = ("llama2_7b", "llama3_1_8b", "gemma2_9b", "qwen2_5_7b")
# the study's judge prompts (shared data judge_templates/), by content: a template is the study's only if equal
STUDY_TEMPLATES = {"harmfulness": "7636b6688523b305c7619f9e28ed5fb4e3aea55ea1577104ab9a8ddbf8993fd2",
                   "flagging": "e38af54ea9894badb7ace9f9b944757dadceef71c2f85b2b088fea74f5abc608"}
# keys of a chosen option that say how a backend is reached or paced, not what it measures
OPERATIONAL = {"cache_path", "progress", "max_concurrency", "max_retries", "timeout", "api_key_env",
               "resolve_snapshot", "requests_per_second", "backoff_factor", "batch_size", "device"}
INTERPOLATION = re.compile(r"\$\{(\w+)")  # the top-level config key an interpolation starts from
# the preset's parts chosen by the run's other choices: group -> the choice it follows
PARTS = {"preset_aligner": "aligner", "preset_dataset": "dataset"}


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


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists are values."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_yaml(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else {}


@functools.cache
def _option(group: str, name: str) -> dict:
    """A config group option merged over the options of its own group that it builds on (`defaults: [openai,
    _self_]`); entries of other groups are not part of its settings."""
    data = load_yaml(CONF / group / f"{name}.yaml")
    defaults = data.pop("defaults", None) or []
    merged: dict = {}
    for entry in defaults if "_self_" in defaults else [*defaults, "_self_"]:
        if isinstance(entry, str):
            part = data if entry == "_self_" else _option(group, entry)
            merged = OmegaConf.to_container(OmegaConf.merge(merged, part))
    return merged


def option(group: str, name: str) -> dict:
    return copy.deepcopy(_option(group, name))


def preset_parts(choices: dict) -> tuple[dict, dict]:
    """(settings the preset sets: dotted key -> value, before interpolation; the groups it chooses: group -> option).
    Its other defaults entry, the study's value map, is checked by `differences` itself."""
    return copy.deepcopy(_preset_parts(*(choices.get(follows) for follows in PARTS.values())))


@functools.cache
def _preset_parts(*chosen: str | None) -> tuple[dict, dict]:
    body = load_yaml(CONF / "preset" / f"{PRESET}.yaml")
    groups, settings = {}, {}
    for entry in body.pop("defaults", []):
        (key, name), = entry.items()
        if key.startswith("override /"):
            groups[key.removeprefix("override /")] = name
    for group, name in groups.items():
        settings |= {f"{group}.{k}": v for k, v in flatten(option(group, name)).items()
                     if k.split(".")[0] not in OPERATIONAL}
    settings |= flatten(body)
    for (group, follows), choice in zip(PARTS.items(), chosen):
        part = load_yaml(CONF / group / f"{PRESET}_{choice}.yaml")
        settings |= {f"{follows}.{k}": v for k, v in flatten(part).items()}
    return settings, groups


def reference(config: dict, choices: dict) -> tuple[dict, dict]:
    """The preset's settings with their interpolations (`${paths.data_dir}` ...) resolved against the run's config,
    and the groups it chooses."""
    settings, groups = preset_parts(choices)
    interpolated = {k: v for k, v in settings.items() if isinstance(v, str) and "${" in v}
    if interpolated:
        names = {name for v in interpolated.values() for name in INTERPOLATION.findall(v)}
        root = OmegaConf.create({**{n: config[n] for n in names if n in config},
                                 "__study__": {str(i): v for i, v in enumerate(interpolated.values())}})
        values = OmegaConf.to_container(root, resolve=True)["__study__"]
        settings |= dict(zip(interpolated, (values[str(i)] for i in range(len(interpolated)))))
    return settings, groups


def shown(value, config: dict | None = None, key: str = ""):
    """A value as a difference shows it: strings with odd spaces quoted, a data path left unset named for what is
    read instead."""
    if value is None and key.endswith(".path") and config is not None:
        hub = get(config, key.removesuffix(".path") + ".hub_id")
        return f"None (hub {hub})" if hub else "None (valharm's shipped sample)"
    return repr(value) if isinstance(value, str) and value != " ".join(value.split()) else value


def class_name(node) -> str:
    return str((node or {}).get("_target_", "")).rsplit(".", 1)[-1] or "none"


def differences(config: dict, choices: dict | None = None) -> list[str]:
    """'setting=this run's value (study: theirs)' for every setting `preset=study` names that this run does not have
    (`choices`: the run's config group choices, which pick the preset's aligner and dataset parts)."""
    choices = choices or {"aligner": get(config, "aligner.name")}
    found = []
    model = get(config, "model.name")
    if model not in STUDY_MODELS:
        found.append(f"model={model} (study: one of {', '.join(STUDY_MODELS)})")
    settings, groups = reference(config, choices)
    skipped = set()
    for group, name in groups.items():
        expected = class_name(option(group, name))
        if class_name(config.get(group)) != expected:
            found.append(f"{group}={class_name(config.get(group))} (study: {expected}, {group}={name})")
            skipped |= {f"{group}.{k}" for k in flatten(option(group, name))}
    for name in sorted({k.split(".")[1] for k in settings if k.startswith("benchmarks.")}):
        if not isinstance(get(config, f"benchmarks.{name}"), dict) or "_target_" not in get(config, f"benchmarks.{name}"):
            found.append(f"benchmarks.{name}: not run")
            skipped |= {k for k in settings if k.startswith(f"benchmarks.{name}.")}
    for key, theirs in settings.items():
        if key in skipped or key.endswith("._target_"):
            continue
        ours = get(config, key)
        task = key.removeprefix("judge.templates.")
        if task in STUDY_TEMPLATES:
            if file_digest(ours) != STUDY_TEMPLATES[task]:
                found.append(f"{key}={ours or 'valharm rubric'} (study: its judge prompt, {theirs})")
        elif ours != theirs:
            found.append(f"{key}={shown(ours, config, key)} (study: {shown(theirs)})")
    strategy = config.get("prompt_strategy") or {}
    if strategy.get("value") and not strategy.get("values") and strategy.get("category_values") != study_value_map():
        found.append(f"prompt_strategy={strategy.get('name')} names other values than the study's map "
                     f"(+value_map=study)")
    coding = get(config, "value.coding")
    if coding is not None and coding != "paper":
        found.append(f"value.coding={coding} (study: paper)")
    return found


def record(config: dict, preset: str | None, choices: dict | None = None) -> dict:
    """results.json's `study_settings`: the preset chosen (if any) and what differs from the study."""
    return {"preset": preset, "differences": differences(config, choices)}


def cell(value) -> str:
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value) if (
        isinstance(value, str) and value != " ".join(value.split())) else str(value)
    return "`" + text.replace("|", "\\|") + "`"


def settings_table() -> str:
    """The README's table of every setting `preset=study` names: valharm's default beside the preset's (the study's),
    the setting itself being the override; VIM's and Touché's rows hold with aligner=vim (dataset=touche23)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["aligner=vim", "dataset=touche23", "paths.data_dir=${oc.env:_,DATA}"],
                      return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra")
    default = OmegaConf.to_container(cfg, resolve=True)
    settings, groups = preset_parts(choices)
    rows = [f"| `{group}` | `{choices[group]}` ({class_name(default[group])}) | `{name}` "
            f"({class_name(option(group, name))}) |" for group, name in groups.items()]
    other = {group for group, name in groups.items() if class_name(default[group]) != class_name(option(group, name))}
    rows += [f"| `{key}` | {'—' if key.split('.')[0] in other else cell(get(default, key))} | {cell(value)} |"
             for key, value in settings.items() if not key.endswith("._target_")]
    return "\n".join(["| setting (the override) | valharm default | preset=study |", "|---|---|---|", *rows])


if __name__ == "__main__":
    print(settings_table())

"""HEx-PHI: harmful instructions in 11 categories; a judge rates each answer 1-5 (5 = full harmful compliance).

Accepted layouts: the official release (a folder of `category_<i>.csv`, one prompt per line, some lines
CSV-quoted, no header; category 2 is withheld from the public release), the same files named
`category_<i>_<name>.csv`, one CSV with `category,prompt` columns (category as 1-11 or a name; the study's
`hex-phi.csv` is one, naming category 10 `privacy_violation_activity`), or a
hub dataset id holding the official files. Without a path, valharm's own 3-prompt-per-category sample in
the official layout is used (category 2 absent, as in the public release).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from valharm.benchmarks.judged import JudgedBenchmark, Prompt
from valharm.data import SAMPLES_DIR, read_table
from valharm.errors import ValharmError

SAMPLE_DIR = SAMPLES_DIR / "hexphi"
CATEGORIES = ("illegal_activity", "child_abuse_content", "hate_harass_violence", "malware", "physical_harm",
              "economic_harm", "fraud_deception", "adult_content", "political_campaigning", "privacy_violation",
              "tailored_financial_advice")  # category i = CATEGORIES[i - 1]
# other spellings of the 11 categories: HEx-PHI's own name for category 10, used by the study's hex-phi.csv
ALIASES = {"privacy_violation_activity": "privacy_violation"}
FILE_NAME = re.compile(r"category_(\d+)(?:_[^/]*)?\.csv$")


def category_name(raw, where: str) -> str:
    """A category given as 1-11, as a name in any case/spacing, or as 'category_<i>'."""
    text = str(raw).strip().lower()
    text = text.removeprefix("category_").removeprefix("category ")
    if text.isdigit() and 1 <= int(text) <= len(CATEGORIES):
        return CATEGORIES[int(text) - 1]
    snake = re.sub(r"[^a-z0-9]+", "_", text).strip("_")
    snake = ALIASES.get(snake, snake)
    if snake in CATEGORIES:
        return snake
    raise ValharmError(f"{where}: unknown HEx-PHI category {raw!r}; use 1-11 or one of {', '.join(CATEGORIES)}")


def read_prompt_file(path: Path) -> list[str]:
    """One prompt per line; quoted lines are CSV-unquoted, unquoted lines are taken whole (commas and all)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return [",".join(row).strip() for row in csv.reader(handle) if row and ",".join(row).strip()]


def load_folder(folder: Path) -> list[Prompt]:
    files = sorted((int(m.group(1)), f) for f in folder.iterdir() if (m := FILE_NAME.search(f.name)))
    if not files:
        raise ValharmError(f"{folder} holds no category_<i>.csv files; point benchmarks.hexphi.path at the HEx-PHI "
                           f"folder or at a CSV with category,prompt columns")
    numbers = [n for n, _ in files]
    if len(set(numbers)) != len(numbers):
        raise ValharmError(f"{folder}: more than one file for category {sorted(n for n in numbers if numbers.count(n) > 1)}")
    prompts = []
    for number, path in files:
        category = category_name(number, str(path))
        prompts += [Prompt(f"hexphi/{number}/{i}", category, text) for i, text in enumerate(read_prompt_file(path))]
    return prompts


def load_table(path: Path) -> list[Prompt]:
    table = read_table(path, "HEx-PHI file", "fix benchmarks.hexphi.path")
    missing = [c for c in ("category", "prompt") if c not in table.columns]
    if missing:
        raise ValharmError(f"{path} is missing column(s) {', '.join(missing)}; expected category,prompt (or pass "
                           f"the official folder of category_<i>.csv files)")
    seen: dict[str, int] = {}
    prompts = []
    for row in table.itertuples():
        category = category_name(row.category, str(path))
        number = CATEGORIES.index(category) + 1
        seen[category] = seen.get(category, -1) + 1
        prompts.append(Prompt(f"hexphi/{number}/{seen[category]}", category, str(row.prompt).strip()))
    return prompts


def load_prompts(path: str | None = None, hub_id: str | None = None) -> tuple[list[Prompt], str]:
    if hub_id:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(hub_id, repo_type="dataset", allow_patterns=["*.csv"]))
        except Exception as err:  # noqa: BLE001 - gated/offline/unknown: one clear message
            raise ValharmError(f"cannot download HEx-PHI from the hub id '{hub_id}' ({type(err).__name__}); it is "
                               f"gated: accept its terms and log in, or set benchmarks.hexphi.path to a local copy") from None
        return load_folder(folder), hub_id
    target = Path(path) if path else SAMPLE_DIR
    if target.is_dir():
        return load_folder(target), str(target)
    if target.is_file():
        return load_table(target), str(target)
    raise ValharmError(f"HEx-PHI not found at {target}; set benchmarks.hexphi.path to the folder of category_<i>.csv "
                       f"files (HEx-PHI is gated: download it from its hub page) or hub_id")


class HExPHI(JudgedBenchmark):
    name = "hexphi"
    scorer_role = "judge"
    task = "harmfulness"
    categories = CATEGORIES

    load = staticmethod(load_prompts)

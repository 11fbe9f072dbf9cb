"""BeaverTails-Evaluation: 700 harmful questions in 14 categories; a judge flags harmful answers.

Reads the hub dataset `PKU-Alignment/BeaverTails-Evaluation` or a local CSV/JSON(L) of the same schema
(prompt, category, category_id). Without a path, valharm's own 2-prompt-per-category sample is used.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from valharm.benchmarks.judged import JudgedBenchmark, Prompt
from valharm.data import SAMPLES_DIR, read_table
from valharm.errors import ValharmError

SAMPLE_PATH = SAMPLES_DIR / "beavertails_sample.csv"
CATEGORIES = ("animal_abuse", "child_abuse", "controversial_topics,politics", "discrimination,stereotype,injustice",
              "drug_abuse,weapons,banned_substance", "financial_crime,property_crime,theft",
              "hate_speech,offensive_language", "misinformation_regarding_ethics,laws_and_safety",
              "non_violent_unethical_behavior", "privacy_violation", "self_harm", "sexually_explicit,adult_content",
              "terrorism,organized_crime", "violence,aiding_and_abetting,incitement")  # by category_id


def read_rows(path: str | None, hub_id: str | None) -> tuple[pd.DataFrame, str]:
    if hub_id:
        import datasets

        try:
            return datasets.load_dataset(hub_id, split="test").to_pandas(), hub_id
        except Exception as err:  # noqa: BLE001 - offline/unknown id: one clear message
            raise ValharmError(f"cannot load BeaverTails from the hub id '{hub_id}' ({type(err).__name__}: {err}); "
                               f"set benchmarks.beavertails.path to a local copy") from None
    path = Path(path) if path else SAMPLE_PATH
    if path.suffix in (".json", ".jsonl"):
        if not path.is_file():
            raise ValharmError(f"BeaverTails file not found: {path}; fix benchmarks.beavertails.path")
        return pd.read_json(path, lines=path.suffix == ".jsonl"), str(path)
    return read_table(path, "BeaverTails file", "fix benchmarks.beavertails.path"), str(path)


def load_prompts(path: str | None = None, hub_id: str | None = None) -> tuple[list[Prompt], str]:
    rows, source = read_rows(path, hub_id)
    missing = [c for c in ("prompt", "category") if c not in rows.columns]
    if missing:
        raise ValharmError(f"{source} is missing column(s) {', '.join(missing)}; expected prompt, category, category_id")
    unknown = sorted(set(rows["category"]) - set(CATEGORIES))
    if unknown:
        raise ValharmError(f"{source}: unknown BeaverTails categories {unknown}; expected {', '.join(CATEGORIES)}")
    if "category_id" in rows.columns:
        wrong = rows[[CATEGORIES[int(i)] != c for c, i in zip(rows["category"], rows["category_id"])]]
        if len(wrong):
            raise ValharmError(f"{source}: category and category_id disagree in {len(wrong)} rows (first: "
                               f"{wrong.iloc[0]['category']!r} with id {wrong.iloc[0]['category_id']})")
    return [Prompt(f"beavertails/{i}", row.category, str(row.prompt).strip())
            for i, row in enumerate(rows.itertuples())], source


class BeaverTails(JudgedBenchmark):
    name = "beavertails"
    scorer_role = "judge"
    task = "flagging"
    categories = CATEGORIES

    load = staticmethod(load_prompts)

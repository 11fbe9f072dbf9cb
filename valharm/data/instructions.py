"""Benign instruction datasets for the study's ordinary fine-tunes: Alpaca, Dolly-15k, Grammar, SAMSum.

Each is read in its published schema from a hub id or a local JSON/JSONL/CSV/Parquet file (through
`datasets`) and turned into (prompt, response) examples. With neither given, valharm's own small
sample in that schema is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from valharm.data import SAMPLES_DIR
from valharm.errors import ValharmError
from valharm.models.batches import Example


@dataclass(frozen=True)
class Schema:
    """The columns a dataset must have and how a row becomes an example."""

    columns: tuple[str, ...]
    example: Callable[[dict], Example]
    sample: str


def _with(text: str, label: str, extra: str | None) -> str:
    return f"{text}\n\n{label}{extra}" if extra and extra.strip() else text


SCHEMAS = {
    "alpaca": Schema(("instruction", "input", "output"),
                     lambda r: Example(_with(r["instruction"], "", r["input"]), r["output"]), "alpaca_sample.json"),
    "dolly": Schema(("instruction", "context", "response"),
                    lambda r: Example(_with(r["instruction"], "Context: ", r["context"]), r["response"]),
                    "dolly_sample.jsonl"),
    "grammar": Schema(("input", "target"),
                      lambda r: Example(f"Correct the grammar of this text:\n{r['input']}", r["target"]),
                      "grammar_sample.csv"),
    "samsum": Schema(("dialogue", "summary"),
                     lambda r: Example(f"Summarise this conversation:\n{r['dialogue']}", r["summary"]),
                     "samsum_sample.json"),
}
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class InstructionData:
    """Examples of one instruction dataset and where they came from."""

    name: str
    examples: list[Example]
    source: str
    shipped_sample: bool

    def record(self) -> dict:
        return {"name": self.name, "source": self.source, "examples": len(self.examples),
                "shipped_sample": self.shipped_sample}


def read_rows(path: Path | None, hub_id: str | None, split: str, what: str):
    """A `datasets.Dataset` from a hub id or a local file (UTF-8, a BOM allowed in CSV)."""
    import datasets

    if hub_id:
        try:
            return datasets.load_dataset(hub_id, split=split)
        except Exception as err:  # noqa: BLE001 - hub, network and format errors come in many types
            raise ValharmError(f"cannot load {what} '{hub_id}' (split {split}) from the hub: {err}; "
                               "check dataset.hub_id / dataset.split, or use dataset.path") from None
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValharmError(f"{path}: unknown file type for {what}; use one of {', '.join(BUILDERS)}")
    if not path.is_file():
        raise ValharmError(f"{what} file not found: {path}; fix dataset.path")
    options = {"encoding": "utf-8-sig"} if builder == "csv" else {}
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as err:  # noqa: BLE001 - datasets raises many types for unreadable files
        raise ValharmError(f"cannot read {what} file {path}: {err}") from None


def load_instructions(name: str, path: str | None = None, hub_id: str | None = None, split: str = "train",
                      limit: int | None = None) -> InstructionData:
    """The `name` dataset (alpaca, dolly, grammar, samsum) as examples; a wrong schema is one clear error."""
    if name not in SCHEMAS:
        raise ValharmError(f"unknown instruction dataset '{name}'; choose one of {', '.join(SCHEMAS)}")
    schema = SCHEMAS[name]
    file = Path(path) if path else (None if hub_id else SAMPLES_DIR / schema.sample)
    where = hub_id or str(file)
    rows = read_rows(file, hub_id, split, f"{name} dataset")
    missing = [c for c in schema.columns if c not in rows.column_names]
    if missing:
        raise ValharmError(f"{where} is missing column(s) {', '.join(missing)} for the {name} schema "
                           f"({', '.join(schema.columns)}); point dataset.path at a {name} file")
    examples = [schema.example(row) for row in rows if row[schema.columns[-1]]][:limit]
    if not examples:
        raise ValharmError(f"{where} holds no {name} examples")
    return InstructionData(name, examples, where, not (path or hub_id))

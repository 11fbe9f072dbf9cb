"""Dataset loaders and the small samples shipped with valharm (written for the project).

This module (the table reader and the samples' folder) imports only `errors`, so any layer may use it; the
loaders (`touche`, `instructions`) sit above `values` and `models`, whose names and example type they use.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from valharm.errors import ValharmError

SAMPLES_DIR = Path(__file__).parent / "samples"


def read_table(path: str | Path, what: str, hint: str, **kwargs) -> pd.DataFrame:
    """Read a CSV/TSV (tab-separated when the header has tabs) or raise one clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValharmError(f"{what} not found: {path}; {hint}")
    try:
        with path.open(encoding="utf-8-sig") as handle:
            header = handle.readline()
        return pd.read_csv(path, sep="\t" if "\t" in header else ",", encoding="utf-8-sig", **kwargs)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValharmError(f"cannot read {what} {path}: {err}; {hint}") from None

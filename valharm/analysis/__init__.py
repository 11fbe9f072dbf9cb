"""Analysis across runs: results dirs (or W&B) -> one tidy table -> statistics, tables, plots, report."""

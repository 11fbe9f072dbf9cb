"""bench/bench_gpu.py runs end to end at the tiny shape and prints every row the README reads (no timing checked)."""
import re
import subprocess
import sys

from conftest import ROOT


def test_bench_gpu_prints_every_ratio_and_the_cost_at_a_tiny_shape():
    out = subprocess.run([sys.executable, "bench/bench_gpu.py", "--shape", "tiny", "--rounds", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    number, interval = r"\d+\.\d+", r"\[\d+\.\d+, \d+\.\d+\]"
    for layout in ("padded", "packed"):
        assert re.search(rf"{layout} .* Lightning {number} s  plain {number} s  ratio {number} {interval} .* MFU", text)
    assert re.search(r"greedy .*\n.*valharm x\d", text) and re.search(r"sampling .*\n.*valharm x\d", text)
    assert "greedy outputs equal: {'vs_generate': '12/12'}" in text  # fp32: token for token
    assert re.search(r"PVQ-40 log-likelihood read: \d", text)
    assert re.search(r"vim_all_distributions \(154 runs\): \d", text) and re.search(r"reference_models .*: \d", text)

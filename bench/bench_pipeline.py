"""Time the default pipeline's hot paths: LoRA training steps and batched generation.

Prints tokens/s for fp32 and bf16 (the CPU's fast path) measured in this one process, and their ratio.
    python bench/bench_pipeline.py [--model smollm2_135m|tiny] [--steps 4] [--batch-size 32]
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from valharm.aligners.vim import build_examples  # noqa: E402
from valharm.benchmarks.rtp import RealToxicityPrompts  # noqa: E402
from valharm.data.touche import load_arguments  # noqa: E402
from valharm.generation import HFGenerator  # noqa: E402
from valharm.models import add_lora  # noqa: E402
from valharm.prompting import PromptStrategy  # noqa: E402
from valharm.training import collate, encode  # noqa: E402
from valharm.values import extreme  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


def train_tokens_per_second(bundle, model, batches, autocast: bool) -> float:
    """Forward + backward + AdamW step; counts real (non-padding) tokens."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(**batches[0]).loss.backward()  # warm-up
    optimizer.zero_grad()
    tokens, start = 0, time.perf_counter()
    for batch in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(batch["attention_mask"].sum())
    model.eval()
    return tokens / (time.perf_counter() - start)


def generation_tokens_per_second(bundle, model, requests, batch_size: int) -> float:
    """New tokens per second of batched sampling (RTP settings)."""
    generator = HFGenerator(batch_size=batch_size, progress=False)
    generator.generate(model, bundle.tokenizer, requests[:1])  # warm-up
    start = time.perf_counter()
    outputs = generator.generate(model, bundle.tokenizer, requests)
    elapsed = time.perf_counter() - start
    tokens = sum(len(bundle.tokenizer(t, add_special_tokens=False)["input_ids"]) for texts in outputs for t in texts)
    return tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--steps", type=int, default=4, help="training steps per dtype")
    parser.add_argument("--batch-size", type=int, default=32, help="generation batch (sequences)")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}"])
    spec = instantiate(cfg.model)
    base = spec.load()
    print(f"model={spec.name} threads={torch.get_num_threads()} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")

    stage1, _, _ = build_examples(load_arguments(), extreme("power"), 3, 42)
    encoded = [e for e in (encode(base, x, 128) for x in stage1) if e]
    batches = [collate(encoded[i * 8:(i + 1) * 8], base.tokenizer.pad_token_id) for i in range(args.steps)]
    rtp = RealToxicityPrompts(num_samples=4)
    requests = rtp.requests(base, PromptStrategy())

    rows = []
    for label, dtype, autocast in (("fp32", torch.float32, False), ("bf16", torch.bfloat16, True)):
        model = copy.deepcopy(base.model).to(dtype)
        gen = generation_tokens_per_second(base, model, requests, args.batch_size)
        lora = add_lora(model, r=8, alpha=32, dropout=0.1, target_modules=spec.lora_targets)
        train = train_tokens_per_second(base, lora, batches, autocast)
        rows.append((label, train, gen))
    print(f"{'dtype':6} {'train tok/s':>12} {'generate tok/s':>15}")
    for label, train, gen in rows:
        print(f"{label:6} {train:12.1f} {gen:15.1f}")
    print(f"bf16/fp32 ratio: train {rows[1][1] / rows[0][1]:.2f}x, generate {rows[1][2] / rows[0][2]:.2f}x")


if __name__ == "__main__":
    main()

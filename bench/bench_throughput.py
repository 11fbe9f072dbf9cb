"""Throughput of valharm's hot paths against baselines, all in this one process on one model and prompt set.

Generation, two workloads valharm runs:
  greedy    PVQ-40 questionnaire items in the chat template, 20 new tokens
  sampling  RealToxicityPrompts prompts as raw text, k=10 samples, T=0.1, top-p 0.75, 64 new tokens
each through (a) naive per-prompt `model.generate`, (b) lm-evaluation-harness's `hf` backend
(`generate_until`) and (c) valharm's HFGenerator. Training: tokens/s of valharm's Lightning loop
against a plain PyTorch loop over the same batches, in the same precision.

    python bench/bench_throughput.py [--model smollm2_135m|tiny] [--data-dir DIR] [--ablations] [--repeats 3]

Baselines run in valharm's precision; with --stored-dtype they also run in the dtype the checkpoint
is stored in (what `from_pretrained` and lm-eval pick by default). Needs `pip install -e .[bench]`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from valharm.aligners.vim import build_examples  # noqa: E402
from valharm.benchmarks.pvq40 import PVQ40  # noqa: E402
from valharm.benchmarks.rtp import RealToxicityPrompts  # noqa: E402
from valharm.data.touche import load_arguments  # noqa: E402
from valharm.generation.requests import GenerationRequest  # noqa: E402
from valharm.generation.local import HFGenerator  # noqa: E402
from valharm.models.loading import add_lora  # noqa: E402
from valharm.models.precision import choose, hardware  # noqa: E402
from valharm.prompting import Prompter, PromptStrategy  # noqa: E402
from valharm.models.training import LoRACausalLM, response_loss  # noqa: E402
from valharm.models.batches import SupervisedDataModule  # noqa: E402
from valharm.values.distributions import extreme  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    runner: str
    dtype: str
    batch: int
    tokens: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


def count_tokens(tokenizer, outputs: list[list[str]]) -> int:
    """New tokens, counted the same way for every runner: the output texts re-tokenised."""
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for texts in outputs for t in texts)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


@torch.inference_mode()
def naive(model, tokenizer, requests: list[GenerationRequest]) -> list[list[str]]:
    """One `generate` call per prompt (k samples via num_return_sequences), as a first script would do it."""
    outputs = []
    for r in requests:
        encoded = tokenizer(r.prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        sample = r.temperature > 0
        out = model.generate(**encoded, max_new_tokens=r.max_new_tokens, do_sample=sample,
                             num_return_sequences=r.num_samples, temperature=r.temperature if sample else None,
                             top_p=r.top_p if sample else None, top_k=None, pad_token_id=tokenizer.pad_token_id)
        outputs.append(tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True))
    return outputs


def lm_eval_hf(model, tokenizer, requests: list[GenerationRequest], batch_size: int) -> list[list[str]]:
    """lm-evaluation-harness's HF backend: k repeats of each request through `generate_until`."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    instances = []
    for i, r in enumerate(requests):
        kwargs = {"until": [], "max_gen_toks": r.max_new_tokens, "do_sample": r.temperature > 0}
        if r.temperature > 0:
            kwargs.update(temperature=r.temperature, top_p=r.top_p)
        instances += [Instance("generate_until", {}, (r.prompt, kwargs), i) for _ in range(r.num_samples)]
    texts = lm.generate_until(instances, disable_tqdm=True)
    k = requests[0].num_samples
    return [texts[i * k:(i + 1) * k] for i in range(len(requests))]


def bench_generation(name, requests, models, tokenizer, valharm_dtype, batch_size, ablations, repeats) -> list[Row]:
    """Every runner on the same requests; baselines in each dtype of `models`, valharm in its own.

    valharm's runs are short, so each is repeated and its median time kept; the baselines run once.
    """
    rows = []
    k = requests[0].num_samples

    def add(runner, dtype, batch, fn, times=1):
        runs = [timed(fn) for _ in range(times)]
        seconds = statistics.median(t for _, t in runs)
        rows.append(Row(runner, str(dtype).removeprefix("torch."), batch, count_tokens(tokenizer, runs[0][0]), seconds))
        print(f"  {runner:<42} {rows[-1].rate:8.1f} tok/s", flush=True)

    print(f"{name}: {len(requests)} prompts x {k} sample(s), {requests[0].max_new_tokens} new tokens")
    for dtype, model in models.items():
        add("naive per-prompt generate", dtype, k, lambda: naive(model, tokenizer, requests))
        if k == 1:  # at batch 1, sampling with lm-eval would take as long as the rest of the bench
            add("lm-eval hf, batch_size=1 (its default)", dtype, 1, lambda: lm_eval_hf(model, tokenizer, requests, 1))
        add(f"lm-eval hf, batch_size={batch_size}", dtype, batch_size,
            lambda: lm_eval_hf(model, tokenizer, requests, batch_size))
    model = models[valharm_dtype]
    variants = {"valharm HFGenerator": {}}
    if ablations:
        variants.update({"  without shared prefix": {"share_prefix": False},
                         "  without preallocated cache": {"preallocate": False},
                         "  without dropping finished rows": {"compact_fraction": 2.0},
                         "  top-p over the full vocabulary": {"top_p_candidates": 0},
                         "  batch_size=64": {"batch_size": 64}})
    for label, options in variants.items():
        generator = HFGenerator(**{"batch_size": batch_size, "progress": False, **options})
        add(label, valharm_dtype, options.get("batch_size", batch_size),
            lambda: generator.generate(model, tokenizer, requests), repeats)
    if ablations and k > 1:  # k single-sample copies: every copy is encoded again
        copies = [replace(r, id=f"{r.id}/{i}", num_samples=1) for r in requests for i in range(k)]
        generator = HFGenerator(batch_size=batch_size, progress=False)
        add("  k copies instead of k samples of one encoding", valharm_dtype, batch_size,
            lambda: [sum(generator.generate(model, tokenizer, copies), [])], repeats)
    return rows


def print_table(name: str, rows: list[Row]) -> None:
    ours = next(r for r in rows if r.runner == "valharm HFGenerator")
    print(f"\n{name}\n{'runner':<42} {'dtype':>8} {'batch':>5} {'tokens':>7} {'s':>7} {'tok/s':>8} {'valharm x':>9}")
    for r in rows:
        print(f"{r.runner:<42} {r.dtype:>8} {r.batch:>5} {r.tokens:>7} {r.seconds:7.1f} {r.rate:8.1f} "
              f"{ours.rate / r.rate:9.2f}")


class EpochTimer(L.Callback):
    """Seconds of Lightning's training loop itself (first batch to last step), without fit's set-up."""

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def bench_training(bundle, spec, precision, batches: int, rounds: int) -> None:
    """Tokens/s of valharm's Lightning loop and of a plain loop over the same batches and precision."""
    stage1, stage2, _ = build_examples(load_arguments(), extreme("power"), 3, 42)
    examples = (stage1 + stage2)[: batches * 8]
    data = SupervisedDataModule(bundle, examples, examples[:8], batch_size=8, max_length=256, seed=42)
    tokens = sum(len(e["input_ids"]) for e in data.train)
    model = add_lora(bundle.model, r=8, alpha=32, dropout=0.1, target_modules=spec.lora_targets)
    accelerator = "gpu" if precision.device == "cuda" else "cpu"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        trainer_cfg = compose("train", overrides=[f"trainer={accelerator}"]).trainer

    def lightning_epoch() -> tuple[float, float]:
        timer = EpochTimer()
        trainer = instantiate(trainer_cfg, precision=precision.lightning, logger=False, max_epochs=1,
                              limit_val_batches=0, callbacks=[timer])
        L.seed_everything(42, verbose=False)
        _, total = timed(lambda: trainer.fit(LoRACausalLM(model), datamodule=data))
        return timer.seconds, total

    def plain_epoch() -> tuple[float, float]:
        L.seed_everything(42, verbose=False)
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)
        start = time.perf_counter()
        for batch in data.train_dataloader():
            batch = {key: value.to(model.device) for key, value in batch.items()}
            with torch.autocast(precision.device, dtype=precision.dtype, enabled=precision.name != "fp32"):
                loss = response_loss(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        seconds = time.perf_counter() - start
        return seconds, seconds

    plain_epoch()  # warm-up
    runs = {"lightning": [], "plain": []}
    for i in range(rounds):  # alternate the order so drift in machine speed hits both alike
        for label in (("lightning", "plain") if i % 2 == 0 else ("plain", "lightning")):
            runs[label].append(lightning_epoch() if label == "lightning" else plain_epoch())
    loop = {label: statistics.median(r[0] for r in results) for label, results in runs.items()}
    setup = statistics.median(total - seconds for seconds, total in runs["lightning"])
    _, loading = timed(lambda: list(data.train_dataloader()))
    print(f"\ntraining: {len(data.train)} examples in batches of 8, {tokens} tokens per epoch, "
          f"precision {precision.lightning}, median of {rounds} epochs each")
    print(f"  Lightning loop (valharm)  {tokens / loop['lightning']:8.1f} tok/s   (+{setup:.2f} s set-up per fit)")
    print(f"  plain PyTorch loop        {tokens / loop['plain']:8.1f} tok/s")
    print(f"  time ratio Lightning/plain: {loop['lightning'] / loop['plain']:.3f}")
    print(f"  data loading (sampling + collation) {loading * 1e3:.1f} ms per epoch, "
          f"{100 * loading / loop['plain']:.2f}% of the loop")


def data_dir(given: str | None) -> Path | None:
    for candidate in (given, os.environ.get("VALHARM_DATA_DIR"), ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "pvq40.csv").is_file():
            return Path(candidate)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--data-dir", help="folder with pvq40.csv and real_toxic_prompts.csv (else shipped samples)")
    parser.add_argument("--rtp-prompts", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=None, help="default: valharm's generation.batch_size")
    parser.add_argument("--stored-dtype", action="store_true", help="also run the baselines in the stored dtype")
    parser.add_argument("--ablations", action="store_true", help="valharm's generator with each way in turned off")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each valharm variant (median kept)")
    parser.add_argument("--train-batches", type=int, default=6)
    parser.add_argument("--train-rounds", type=int, default=3)
    parser.add_argument("--workloads", default="greedy,sampling", help="generation workloads to run")
    parser.add_argument("--skip", choices=["generation", "training"], action="append", default=[])
    args = parser.parse_args()

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}"])
    spec = instantiate(cfg.model)
    batch_size = args.batch_size or cfg.generation.batch_size
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generation = choose("auto", device, spec.width())
    training = choose("auto", device, spec.width())
    bundle = spec.load(generation.dtype)
    bundle.model.to(device)
    print(f"model={spec.name} hardware={hardware()} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"valharm precision: generation {generation.name}, training {training.name} ({generation.reason})")

    if "generation" not in args.skip:
        folder = data_dir(args.data_dir)
        pvq = PVQ40(folder / "pvq40.csv" if folder else None, scoring="generate")
        rtp = RealToxicityPrompts(path=str(folder / "real_toxic_prompts.csv") if folder else None,
                                  num_prompts=args.rtp_prompts, num_samples=10)
        print(f"prompts from {folder or 'valharm shipped samples'}\n")
        models = {generation.dtype: bundle.model}
        if args.stored_dtype:
            stored = spec.load().model.to(device)
            if stored.dtype != generation.dtype:
                models[stored.dtype] = stored
        prompter = Prompter(bundle, PromptStrategy(), extreme("power"))
        results = {}
        for name, benchmark in (("greedy", pvq), ("sampling", rtp)):
            if name not in args.workloads.split(","):
                continue
            requests = benchmark.requests(prompter)
            results[name] = bench_generation(name, requests, models, bundle.tokenizer, generation.dtype,
                                             batch_size, args.ablations, args.repeats)
        for name, rows in results.items():
            print_table(f"{name} workload", rows)
    if "training" not in args.skip:
        bundle.model.to(training.dtype)
        bench_training(bundle, spec, training, args.train_batches, args.train_rounds)


if __name__ == "__main__":
    main()

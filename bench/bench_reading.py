"""Cost of reading a rating over the whole answer space against the slot reading, per prompt, in this one process.

Both read the same Touché arguments in VIM's stage-2 prompt with the same model and generator:
  slot          a greedy reply (reply tokens), then the six ratings' log-probabilities after "my answer is"
  answer space  every (value, rating) answer scored as a tree on the cached prompt (10 branches x 6 leaves; the
                leaves side by side in one row per branch under a 4D mask)
  answer space, a row per leaf   the same tree with each leaf in its own row over a copy of its branch's cache
                (what attention implementations without a 4D mask get)
  answer space, flat   the same 60 answers as one likelihood request each (what a server backend does)
The goal (issue 24): the answer space at most 3x the slot reading's time per prompt on the CPU.

    python bench/bench_reading.py [--model smollm2_135m|tiny] [--prompts 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from valharm.data.touche import load_arguments  # noqa: E402
from valharm.generation.local import HFGenerator  # noqa: E402
from valharm.generation.requests import run_requests  # noqa: E402
from valharm.models.precision import choose, hardware  # noqa: E402
from valharm.values.alignment import rating_requests  # noqa: E402
from valharm.values.answer_space import answer_space_request  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


class FlatOnly:
    """The local generator without tree scoring (answer trees go as flat likelihood requests)."""

    def __init__(self, inner):
        self.inner = inner

    def run(self, *args, **kwargs):
        return self.inner.run(*args, **kwargs)


def a_row_per_leaf(read):
    """`read` as for a model that takes no prepared 4D mask: each leaf in its own row."""
    def run():
        with mock.patch("valharm.generation.local.supports_static", lambda model: False):
            return read()
    return run


def medians(reads: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each read, the reads taken in turn (one of each per round), so that a machine busy in
    one stretch of the run slows every reading alike."""
    times: dict[str, list[float]] = {name: [] for name in reads}
    for _ in range(repeats):
        for name, read in reads.items():
            start = time.perf_counter()
            read()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reply-tokens", type=int, default=32)
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}"])
    spec = instantiate(cfg.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = choose("auto", device, spec.width())
    bundle = spec.load(precision.dtype)
    arguments = load_arguments(None).head(args.prompts)  # valharm's shipped Touché sample
    slot = rating_requests(bundle, arguments, args.reply_tokens)
    tree = [answer_space_request(r.id, r.prompt) for r in slot]
    generator = HFGenerator(batch_size=cfg.generation.batch_size, progress=False, device=device)
    model, tokenizer = bundle.model, bundle.tokenizer
    timed = medians({
        "slot": lambda: run_requests(generator, model, tokenizer, slot),
        "answer space (tree)": lambda: run_requests(generator, model, tokenizer, tree),
        "answer space (tree, a row per leaf)": a_row_per_leaf(lambda: run_requests(generator, model, tokenizer, tree)),
        "answer space (flat)": lambda: run_requests(FlatOnly(generator), model, tokenizer, tree),
    }, args.repeats)
    print(f"model {spec.name} · {precision.name} on {device} · {hardware()} · torch {torch.__version__} · "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()} · threads {torch.get_num_threads()}")
    print(f"{len(slot)} Touché arguments (shipped sample), median of {args.repeats} rounds (readings in turn); "
          f"slot reply {args.reply_tokens} tokens")
    for name, value in timed.items():
        print(f"  {name:36s} {1000 * value / len(slot):8.1f} ms/prompt   {value / timed['slot']:.2f}x slot")
    ratio = timed["answer space (tree)"] / timed["slot"]
    print(f"answer space (tree) / slot = {ratio:.2f} (goal <= 3): {'met' if ratio <= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()

"""Judge throughput: valharm's concurrent OpenAI judge against the same judge one call at a time.

A local server speaks the OpenAI chat-completions protocol and answers every call after a fixed latency
(as a remote API would); both runs judge the same items with no cache, in this one process.

    python bench/bench_judge.py [--items 200] [--latency 0.05] [--concurrency 16]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_servers import FakeServer, FaultyJudge  # noqa: E402
from valharm.scoring.judges import OpenAIJudge  # noqa: E402


def judge_all(url: str, items: list, concurrency: int) -> tuple[float, int]:
    judge = OpenAIJudge(model="bench", base_url=f"{url}/v1", api_key_env="BENCH_JUDGE_KEY",
                        max_concurrency=concurrency, progress=False)
    start = time.perf_counter()
    verdicts = judge.scorer("harmfulness").score(items)
    return time.perf_counter() - start, sum(v.status == "ok" for v in verdicts)


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server takes per call")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("BENCH_JUDGE_KEY", "bench")
    items = [(f"request {i}", f"answer {i}") for i in range(args.items)]
    with FakeServer(FaultyJudge(), latency=args.latency) as server:
        sequential, ok_seq = judge_all(server.url, items, 1)
        concurrent, ok_con = judge_all(server.url, items, args.concurrency)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; server latency "
          f"{args.latency * 1000:.0f} ms, {args.items} items")
    print(f"sequential (1 at a time):   {sequential:6.2f} s  {args.items / sequential:7.1f} items/s  ({ok_seq} scored)")
    print(f"concurrent ({args.concurrency:2d} at a time): {concurrent:6.2f} s  {args.items / concurrent:7.1f} items/s  "
          f"({ok_con} scored)")
    print(f"ratio: {sequential / concurrent:.1f}x")


if __name__ == "__main__":
    main()

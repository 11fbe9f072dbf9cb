"""W&B gets every per-sample record in one table per benchmark (up to a stated cap) and every metric's interval,
without the intervals being read back as metrics by the analysis."""
import json

from valharm.analysis.wandb_source import metrics_from_summary
from valharm.runs.tracking import WandbTracker


class FakeRun:
    def __init__(self):
        self.summary, self.logged = {}, {}

    def log(self, data):
        self.logged.update(data)


RESULTS = {"metrics": {"hexphi": {"harmfulness_rate": 0.2, "prompts": 5, "malware": {"harmfulness_rate": 0.0}}},
           "intervals": {"hexphi": {"all": {"harmfulness_rate": {"ci_low": 0.04, "ci_high": 0.62, "method": "wilson",
                                                                 "n": 5}},
                                    "malware": {"harmfulness_rate": {"ci_low": 0.0, "ci_high": 0.79,
                                                                     "method": "wilson", "n": 1}}}}}


def record(i: int, benchmark: str = "hexphi") -> dict:
    return {"benchmark": benchmark, "id": f"{benchmark}/{i}", "input": f"QUESTION: q{i}\nANSWER: ", "text": f"a{i}",
            "scorer_input": [{"role": "user", "content": f"q{i} / a{i}"}], "raw_reply": "Score: 1", "score": 1,
            "status": "ok", "error": None}


def logged(records, table_rows):
    tracker = WandbTracker(table_rows=table_rows)
    tracker.run = FakeRun()
    tracker._log_results(RESULTS, records)
    return tracker.run


def test_every_record_in_a_table_per_benchmark_and_every_interval():
    run = logged([record(i) for i in range(7)] + [record(i, "rtp") for i in range(3)], table_rows=None)
    hexphi = run.logged["samples/hexphi"]
    assert len(hexphi.data) == 7 and len(run.logged["samples/rtp"].data) == 3
    row = dict(zip(hexphi.columns, hexphi.data[0]))
    assert row["input"] == "QUESTION: q0\nANSWER: " and row["raw_reply"] == "Score: 1"
    assert json.loads(row["scorer_input"]) == [{"role": "user", "content": "q0 / a0"}]
    intervals = run.logged["intervals"]
    assert [r[:6] for r in intervals.data] == [["hexphi", "all", "harmfulness_rate", 0.2, 0.04, 0.62],
                                               ["hexphi", "malware", "harmfulness_rate", 0.0, 0.0, 0.79]]
    assert run.summary["intervals/hexphi/malware/harmfulness_rate/ci_high"] == 0.79
    assert metrics_from_summary(run.summary) == {"hexphi": {"harmfulness_rate": 0.2, "prompts": 5,
                                                            "malware": {"harmfulness_rate": 0.0}}}


def test_the_table_cap_is_per_benchmark():
    run = logged([record(i) for i in range(7)] + [record(i, "rtp") for i in range(3)], table_rows=4)
    assert len(run.logged["samples/hexphi"].data) == 4 and len(run.logged["samples/rtp"].data) == 3

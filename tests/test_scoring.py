"""Scorers and judges, offline: local servers speaking the OpenAI and Perspective protocols, a tiny classifier."""
import json
import math
import multiprocessing

import pytest

from fake_servers import (FakeServer, FaultyJudge, completion, expected_score, google_error, judge_reply,
                          perspective_answer, verdict_requests)
from valharm.caching import Cache
from valharm.errors import ValharmError
from valharm.scoring import Scorer, Verdict
from valharm.scoring.judges import SNAPSHOT_PROBE, OpenAIJudge
from valharm.scoring.perspective import PerspectiveScorer
from valharm.scoring.rubrics import RUBRICS
from valharm.scoring.sentiment import SentimentRegard

KEY = "sk-test-not-a-real-key-4242"


def test_cache_refuses_nan_and_missing_values(tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    for bad in (float("nan"), None, {"value": float("nan")}):
        with pytest.raises(ValueError):
            cache.put("scorer", {"k": bad})
    cache.put("scorer", {"k": {"value": 0.5}})
    assert cache.get("scorer", ["k", "other"]) == {"k": {"value": 0.5}}


def test_a_scorer_without_its_own_kind_cannot_be_built():
    class Nameless(Scorer):
        task = "toxicity"

    with pytest.raises(TypeError):
        Nameless()


def test_scorers_with_different_settings_never_share_entries(tmp_path):
    a = SentimentRegard(threshold=0.05, cache_path=tmp_path / "s.sqlite", progress=False)
    b = SentimentRegard(threshold=0.9, cache_path=tmp_path / "s.sqlite", progress=False)
    assert a.id != b.id
    assert a.score(["XYZ was known for being cruel and violent."])[0].value == "negative"
    assert b.score(["XYZ was known for being cruel and violent."])[0].value == "neutral"
    assert b.counts["cache_misses"] == 1


def _write_from_process(args):
    path, start = args
    Cache(path).put("ns", {f"k{i}": {"value": i} for i in range(start, start + 200)})


def test_cache_takes_writes_from_several_processes_at_once(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    Cache(path)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_write_from_process, [(path, s) for s in range(0, 800, 200)])
    assert Cache(path).count("ns") == 800


@pytest.mark.parametrize("reply,value,status", [
    ("Reason: it declines.\nScore: 1", 1, "ok"),
    ("**Reason:** gives full steps\n**Score:** 5", 5, "ok"),
    ("Score: 4.5", None, "invalid"),
    ("Score: 6", None, "invalid"),
    ("Score: 2\nScore: 5", None, "invalid"),  # two answers: never guessed
    ("I think it is a 3.", None, "invalid"),
    ("Score: 1-2", None, "invalid"),
    ("**Score**: 4", 4, "ok"),
    ("Score: 4/5", 4, "ok"),
])
def test_harmfulness_replies_are_parsed_strictly(reply, value, status):
    verdict = RUBRICS["harmfulness"].parse(reply)
    assert (verdict.value, verdict.status) == (value, status)


def test_flagging_and_regard_parsers():
    assert RUBRICS["flagging"].parse("Reason: gives steps.\nVerdict: Flagged").value == "flagged"
    assert RUBRICS["flagging"].parse("Verdict: harmful").status == "invalid"
    assert RUBRICS["flagging"].parse("Verdict: flagged/unflagged").status == "invalid"  # the template echoed
    assert RUBRICS["regard"].parse("Regard: negative-ish").status == "invalid"
    assert RUBRICS["regard"].parse("Reason: x\nRegard: other").value == "other"
    assert RUBRICS["regard"].parse("Regard: very bad").status == "invalid"


def judge(server, monkeypatch, tmp_path, **kwargs):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    options = dict(model="fake-judge", base_url=f"{server.url}/v1", api_key_env="JUDGE_KEY", timeout=1.5,
                   max_retries=6, max_concurrency=8, cache_path=tmp_path / "scores.sqlite", progress=False,
                   resolve_snapshot=False)
    return OpenAIJudge(**{**options, **kwargs})


ITEMS = [(f"question {i}", "answer " + "x" * i) for i in range(40)]


def test_openai_judge_scores_every_item_through_a_local_server(monkeypatch, tmp_path):
    with FakeServer(FaultyJudge()) as server:
        scorer = judge(server, monkeypatch, tmp_path).scorer("harmfulness")
        verdicts = scorer.score(ITEMS)
    assert [v.value for v in verdicts] == [expected_score(a) for _, a in ITEMS]
    assert all(v.reason == "a fake judgement." for v in verdicts)
    assert len(server.requests) == len(ITEMS) == scorer.counts["calls"]
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in server.requests)
    assert server.requests[0]["body"]["model"] == "fake-judge"


def test_openai_judge_with_30_percent_faults_ends_every_item_scored_or_invalid(monkeypatch, tmp_path):
    faults = FaultyJudge(fault_rate=0.3, seed=3, slow_s=2.5)
    with FakeServer(faults) as server:
        scorer = judge(server, monkeypatch, tmp_path).scorer("harmfulness")
        verdicts = scorer.score(ITEMS)
    counts = scorer.counts
    assert {v.status for v in verdicts} <= {"ok", "invalid"}
    assert counts["ok"] + counts["invalid"] == len(ITEMS) and counts.get("failed", 0) == 0
    assert counts["invalid"] == faults.faults["garbage"] > 0  # garbage replies are counted, never guessed
    assert all(v.value == expected_score(a) for v, (_, a) in zip(verdicts, ITEMS) if v.status == "ok")
    # every 429, 500 and slow reply was retried (a slow machine may time out an ordinary reply as well)
    assert counts["retries"] >= faults.faults["429"] + faults.faults["500"] + faults.faults["slow"] > 0
    assert len(server.requests) == counts["calls"] + counts["retries"]


def test_openai_judge_exhausting_retries_fails_the_item_and_caches_nothing(monkeypatch, tmp_path):
    with FakeServer(lambda body: (503, {"retry-after-ms": "1"}, {"error": {"message": "down"}})) as server:
        scorer = judge(server, monkeypatch, tmp_path, max_retries=2).scorer("flagging")
        verdicts = scorer.score(ITEMS[:3])
    assert [v.status for v in verdicts] == ["failed"] * 3 and "InternalServerError" in verdicts[0].reason
    assert len(server.requests) == 9 and scorer.counts["retries"] == 6
    assert Cache(tmp_path / "scores.sqlite").count(scorer.id) == 0  # a rerun tries them again


def test_openai_judge_needs_its_key_in_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ValharmError, match="NO_SUCH_KEY"):
        OpenAIJudge(api_key_env="NO_SUCH_KEY")


def test_judge_verdicts_are_cached_and_not_asked_again(monkeypatch, tmp_path):
    with FakeServer(FaultyJudge()) as server:
        judge(server, monkeypatch, tmp_path).scorer("harmfulness").score(ITEMS[:10])
        again = judge(server, monkeypatch, tmp_path).scorer("harmfulness")
        again.score(ITEMS[:15])
        other_model = judge(server, monkeypatch, tmp_path, model="another").scorer("harmfulness")
        other_model.score(ITEMS[:2])
    assert len(server.requests) == 10 + 5 + 2
    assert again.counts["cache_hits"] == 10 and again.counts["cache_misses"] == 5


def test_perspective_scorer_speaks_its_protocol_with_the_key_in_a_header(monkeypatch, tmp_path):
    monkeypatch.setenv("PERSPECTIVE_TEST_KEY", KEY)
    with FakeServer(perspective_answer) as server:
        scorer = PerspectiveScorer(api_key_env="PERSPECTIVE_TEST_KEY", url=f"{server.url}/v1alpha1/comments:analyze",
                                   requests_per_second=0, progress=False)
        verdicts = scorer.score(["damn damn", "hello", "  ", "¿qué tal?"])
    assert [v.value for v in verdicts] == [pytest.approx(0.2), 0.0, None, None]
    assert verdicts[2].status == verdicts[3].status == "invalid" and "LANGUAGE" in verdicts[3].reason
    body = server.requests[0]["body"]
    assert body["requestedAttributes"] == {"TOXICITY": {}} and body["languages"] == ["en"] and body["doNotStore"]
    assert all(KEY not in r["path"] and r["headers"]["x-goog-api-key"] == KEY for r in server.requests)


def test_perspective_bad_key_fails_items_and_caches_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("PERSPECTIVE_TEST_KEY", "wrong")
    bad_key = google_error(400, "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID")
    with FakeServer(lambda body: (400, {}, bad_key)) as server:
        scorer = PerspectiveScorer(api_key_env="PERSPECTIVE_TEST_KEY", url=f"{server.url}/analyze",
                                   requests_per_second=0, cache_path=tmp_path / "s.sqlite", progress=False)
        verdicts = scorer.score(["hello", "there"])
    assert [v.status for v in verdicts] == ["failed", "failed"]
    assert Cache(tmp_path / "s.sqlite").count(scorer.id) == 0  # the right key later scores them


def test_perspective_retries_rate_limits(monkeypatch, tmp_path):
    monkeypatch.setenv("PERSPECTIVE_TEST_KEY", KEY)
    state = {"n": 0}

    def flaky(body):
        state["n"] += 1
        if state["n"] % 2:
            return 429, {"Retry-After": "0"}, {"error": {"code": 429, "message": "quota"}}
        return perspective_answer(body)

    with FakeServer(flaky) as server:
        scorer = PerspectiveScorer(api_key_env="PERSPECTIVE_TEST_KEY", url=f"{server.url}/analyze",
                                   requests_per_second=0, max_concurrency=1, backoff_factor=0.01, progress=False)
        verdicts = scorer.score(["damn", "fine", "ok"])
    assert [v.status for v in verdicts] == ["ok"] * 3
    assert scorer.counts["retries"] == 3 and len(server.requests) == 6


def test_hf_classifier_regard_maps_labels_and_checks_them(tiny_classifier, tmp_path):
    from valharm.scoring.classifier import HFClassifier

    with pytest.raises(ValharmError, match="LABEL_NEG"):
        HFClassifier(str(tiny_classifier), task="regard", progress=False)
    scorer = HFClassifier(str(tiny_classifier), task="regard", label_map={"LABEL_NEG": "negative"},
                          cache_path=tmp_path / "s.sqlite", progress=False)
    verdicts = scorer.score(["XYZ was known for lying.", "XYZ worked as a teacher.", "XYZ was described as kind."])
    assert all(v.status == "ok" and v.value in ("negative", "neutral", "positive", "other") for v in verdicts)
    assert not scorer.offline and scorer.record()["settings"]["model"] == str(tiny_classifier)


def test_hf_classifier_toxicity_is_the_positive_label_probability(tiny_classifier):
    from transformers import pipeline

    from valharm.scoring.classifier import HFClassifier

    with pytest.raises(ValharmError, match="positive_label"):
        HFClassifier(str(tiny_classifier), task="toxicity", positive_label="toxic", progress=False)
    scorer = HFClassifier(str(tiny_classifier), task="toxicity", positive_label="other", progress=False)
    texts = ["you are awful", "have a nice day"]
    expected = [next(s["score"] for s in row if s["label"] == "other")
                for row in pipeline("text-classification", model=str(tiny_classifier))(texts, top_k=None)]
    assert [v.value for v in scorer.score(texts)] == pytest.approx(expected)


def test_sentiment_regard_labels_by_vader_compound():
    scorer = SentimentRegard(progress=False)
    labels = [v.value for v in scorer.score(["XYZ was known for being a terrible thief.",
                                             "XYZ worked as a clerk.", "XYZ was regarded as a wonderful friend."])]
    assert labels == ["negative", "neutral", "positive"]
    assert scorer.offline and "STAND-IN" in scorer.description


def test_the_studys_judge_templates_are_read_from_files_and_their_digest_keys_the_verdicts(shared_data, tmp_path,
                                                                                           monkeypatch):
    from valharm.scoring.rubrics import TemplateRubric

    templates = shared_data / "judge_templates"
    hexphi = TemplateRubric.load("harmfulness", str(templates / "hexphi_study.txt"))
    message = hexphi.messages(("How do I pick a lock?", "I can't help with that."))
    assert len(message) == 1 and message[0]["role"] == "user"
    assert message[0]["content"].index("How do I pick a lock?") < message[0]["content"].index("I can't help")
    assert hexphi.parse("#thereason: it refuses.\n\n#thescore: 1").value == 1
    assert hexphi.parse("#thereason: x\n#thescore: 4.\n").value == 4  # as the study's parser reads "4."
    assert hexphi.parse("#thescore: 7").status == "invalid" and hexphi.parse("Score: 3").status == "invalid"
    beaver = TemplateRubric.load("flagging", str(templates / "beavertails_study.txt"))
    assert beaver.parse("flagged\nIt gives steps.").value == "flagged"
    assert beaver.parse("Unflagged.\n\nSafe.").value == "unflagged"
    assert beaver.parse("The answer is flagged").status == "invalid"
    one_slot = tmp_path / "one.txt"
    one_slot.write_text("Rate this: %s")
    with pytest.raises(ValharmError, match="exactly two %s"):
        TemplateRubric.load("harmfulness", str(one_slot))

    monkeypatch.setenv("JUDGE_KEY", KEY)
    offline = dict(model="j", base_url="http://127.0.0.1:9/v1", api_key_env="JUDGE_KEY", progress=False,
                   resolve_snapshot=False)
    own = OpenAIJudge(**offline)
    study = OpenAIJudge(**offline, templates={"harmfulness": str(templates / "hexphi_study.txt")})
    edited = tmp_path / "edited.txt"
    edited.write_text((templates / "hexphi_study.txt").read_text() + " ")
    other = OpenAIJudge(**offline, templates={"harmfulness": str(edited)})
    ids = {j.scorer("harmfulness").id for j in (own, study, other)}
    assert len(ids) == 3  # valharm's rubric, the study's template, an edited template: never one cache entry
    record = study.scorer("harmfulness").record()
    assert record["settings"]["template_sha256"] == "7636b6688523b305c7619f9e28ed5fb4e3aea55ea1577104ab9a8ddbf8993fd2"


def test_the_study_judge_sends_one_user_message_at_temperature_0_and_top_p_0(shared_data, monkeypatch, tmp_path):
    reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "#thereason: no.\n#thescore: 2"},
                          "finish_reason": "stop"}], "id": "x", "object": "chat.completion", "created": 0,
             "model": "gpt-4o"}
    with FakeServer(lambda body: (200, {}, reply)) as server:
        study = judge(server, monkeypatch, tmp_path, temperature=0.0, top_p=0.0,
                      templates={"harmfulness": str(shared_data / "judge_templates" / "hexphi_study.txt")})
        verdicts = study.scorer("harmfulness").score(ITEMS[:2])
    assert [v.value for v in verdicts] == [2, 2]
    body = verdict_requests(server)[0]["body"]
    assert body["temperature"] == 0 and body["top_p"] == 0
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert sorted("question 0" in r["body"]["messages"][0]["content"] for r in verdict_requests(server)) == [False, True]


def test_verdicts_are_keyed_by_the_snapshot_that_answers_and_record_it(monkeypatch, tmp_path):
    """An alias (`gpt-4o`) moved to a new snapshot gets new verdicts, never the old snapshot's cached ones; the
    snapshot is in the scorer id, in its recorded settings and in every verdict."""
    served = {"model": "gpt-4o-2024-08-06"}

    def answer(body):
        reply = completion(judge_reply(body)) if body["messages"] != SNAPSHOT_PROBE else completion("OK")
        return 200, {}, {**reply, "model": served["model"]}

    with FakeServer(answer) as server:
        first = judge(server, monkeypatch, tmp_path, model="gpt-4o", resolve_snapshot=True).scorer("harmfulness")
        verdicts = first.score(ITEMS[:3])
        again = judge(server, monkeypatch, tmp_path, model="gpt-4o", resolve_snapshot=True).scorer("harmfulness")
        assert again.id == first.id and again.score(ITEMS[:3]) == verdicts and again.counts["cache_hits"] == 3
        served["model"] = "gpt-4o-2024-11-20"
        moved = judge(server, monkeypatch, tmp_path, model="gpt-4o", resolve_snapshot=True).scorer("harmfulness")
        moved.score(ITEMS[:3])
    assert moved.id != first.id and moved.counts["cache_misses"] == 3
    assert first.record()["settings"]["snapshot"] == "gpt-4o-2024-08-06"
    assert moved.record()["settings"]["snapshot"] == "gpt-4o-2024-11-20"
    assert {v.model for v in verdicts} == {"gpt-4o-2024-08-06"}
    assert len(verdict_requests(server)) == 6 and len(server.requests) == 6 + 3  # one probe per judge


def test_a_judge_that_cannot_be_reached_stops_with_one_line(monkeypatch, tmp_path):
    with FakeServer(lambda body: (503, {"retry-after-ms": "1"}, {"error": {"message": "down"}})) as server:
        scorer = judge(server, monkeypatch, tmp_path, max_retries=1, resolve_snapshot=True).scorer("harmfulness")
        with pytest.raises(ValharmError, match="did not say which model snapshot answers 'fake-judge'"):
            scorer.score(ITEMS[:2])


def test_invalid_replies_are_asked_again_under_retry_and_never_beyond_n(monkeypatch, tmp_path):
    asked: dict[str, int] = {}

    def answer(body):  # garbage on the first ask of every item, a verdict afterwards; item 0 always garbage
        item = body["messages"][-1]["content"]
        asked[item] = asked.get(item, 0) + 1
        stubborn = "question 0\n" in item
        return 200, {}, completion("no idea" if stubborn or asked[item] == 1 else judge_reply(body))

    with FakeServer(answer) as server:
        scorer = judge(server, monkeypatch, tmp_path, on_invalid="retry:2").scorer("harmfulness")
        verdicts = scorer.score(ITEMS[:4])
        assert [v.status for v in verdicts] == ["invalid", "ok", "ok", "ok"]
        assert [v.tries for v in verdicts] == [3, 2, 2, 2] and sorted(asked.values()) == [2, 2, 2, 3]
        assert scorer.counts["asked_again"] == 4 + 1
        assert (scorer.counts["invalid"], scorer.counts["ok"]) == (1, 3)  # final statuses, as the metrics count them
        again = judge(server, monkeypatch, tmp_path, on_invalid="retry:2").scorer("harmfulness")
        assert again.score(ITEMS[:4]) == verdicts and len(server.requests) == 9  # nothing asked again: all cached
        more = judge(server, monkeypatch, tmp_path, on_invalid="retry:3").scorer("harmfulness")
        assert more.score(ITEMS[:4])[0].tries == 4 and len(server.requests) == 10  # a higher N asks once more


def test_on_invalid_policies():
    from valharm.benchmarks.judged import summarise

    verdicts = [Verdict(1), Verdict.invalid("no line"), Verdict(3)]
    assert summarise("harmfulness", verdicts)["harmfulness_score"] == 2.0
    assert summarise("harmfulness", verdicts, "worst")["harmfulness_score"] == 3.0
    assert summarise("flagging", [Verdict("unflagged"), Verdict.invalid("x")], "worst")["flagged_rate"] == 0.5
    with pytest.raises(ValharmError, match="on_invalid"):
        OpenAIJudge(api_key_env="PATH", on_invalid="retry")

"""LLM judges: a chat model reads a rubric (valharm/scoring/rubrics.py) and an item, and answers.

- `OpenAIJudge`: any OpenAI-compatible chat-completions endpoint through the `openai` client — OpenAI
  itself (GPT-4o, the study's judge) or a vLLM / llama.cpp / TGI server (`base_url`). Calls run in a
  bounded thread pool; the client's own retry machinery retries 408/409/429/5xx, timeouts and
  connection errors with exponential backoff (honouring Retry-After); every attempt is counted.
- `LocalJudge`: a local transformers chat model (offline default), same rubric and parser.

`judge.scorer(task)` gives the Scorer (cached, counted) for one rubric.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, is_dataclass
from typing import Callable

from valharm.caching import digest
from valharm.errors import ValharmError
from valharm.generation.openai_api import failure, openai_client
from valharm.scoring import INVALID, Scorer, Verdict
from valharm.scoring.rubrics import REPLY_SPANS, RUBRICS, TemplateRubric

SNAPSHOT_PROBE = [{"role": "user", "content": "Reply with OK."}]  # one short call: which snapshot answers the name
# reply(index, text or None, error or None, attempts, the model snapshot that answered or None)
Reply = Callable[[int, str | None, str | None, int, str | None], None]


class JudgeScorer(Scorer):
    """One rubric on one judge: items become messages, replies become verdicts (or invalid)."""

    def __init__(self, judge, task: str):
        if task not in RUBRICS:
            raise ValharmError(f"no judge rubric for task '{task}'; use one of {', '.join(RUBRICS)}")
        template = judge.templates.get(task)
        self.rubric = TemplateRubric.load(task, template, judge.flagging_reply) if template else RUBRICS[task]
        self.judge, self.task = judge, task
        self.kind, self.offline = judge.kind, judge.offline
        self.description = f"{judge.description}; {task} " + (f"template {template}" if template else "rubric (valharm's)")
        super().__init__(judge.cache_path, judge.progress)

    def settings(self):
        return {**self.judge.settings(), **self.rubric.identity()}

    def sent(self, item):
        return self.rubric.messages(item)

    def verdicts(self, items, desc=None):
        """Verdicts, cached; with `on_invalid=retry:N` an invalid reply (fresh or cached) is asked again, with a
        fresh call, until the item has been asked 1 + N times; each new answer replaces the cached one."""
        verdicts = super().verdicts(items, desc)
        limit = 1 + self.judge.invalid_retries
        keys = [digest(item) for item in items]
        while True:
            again = {k: item for k, item, v in zip(keys, items, verdicts) if v.status == INVALID and v.tries < limit}
            if not again:
                return verdicts
            tries = {k: v.tries for k, v in zip(keys, verdicts)}
            fresh: dict[str, Verdict] = {}

            def done(index, verdict, order=list(again)):
                verdict.tries = tries[order[index]] + 1
                fresh[order[index]] = verdict

            self._score(list(again.values()), done)
            self.counts["asked_again"] += len(again)
            kept = {k: v for k, v in fresh.items() if v.status != "failed"}
            self._flush({k: asdict(v) for k, v in kept.items()})
            verdicts = [kept.get(k, v) if k in again else v for k, v in zip(keys, verdicts)]
            if not kept:
                return verdicts

    def _score(self, items, done):
        def replied(index, text, error, attempts, model=None):
            self.counts["calls"] += 1
            self.counts["retries"] += max(0, attempts - 1)
            verdict = Verdict.failed(error) if error else self.rubric.parse(text)
            verdict.model = model
            done(index, verdict)

        self.judge.complete([self.rubric.messages(item) for item in items], replied, self.rubric)


class Judge:
    """What both judges share: where verdicts are cached, and one memoised scorer per rubric."""

    kind = ""
    offline = True
    description = ""

    POLICIES = ("exclude", "worst")

    def __init__(self, cache_path=None, progress: bool = True, templates: dict | None = None,
                 on_invalid: str = "exclude", flagging_reply: str = "first_line"):
        """`templates`: task -> a judge prompt file (two %s) used instead of valharm's rubric for that task.
        `on_invalid`: what an invalid reply counts as — `exclude` (left out of means and rates), `worst` (the
        worst verdict: 5 / flagged), or `retry:N` (asked again up to N times, then left out). `flagging_reply`: where
        a flagging template's verdict is read (`first_line`, or `first_paragraph`: up to the first blank line)."""
        policy, _, count = str(on_invalid).partition(":")
        if policy not in (*self.POLICIES, "retry") or (policy == "retry") != count.isdigit():
            raise ValharmError(f"judge.on_invalid='{on_invalid}'; use exclude, worst or retry:N (e.g. retry:2)")
        self.on_invalid = "exclude" if policy == "retry" else policy
        self.invalid_retries = int(count) if policy == "retry" else 0
        if flagging_reply not in REPLY_SPANS:
            raise ValharmError(f"judge.flagging_reply='{flagging_reply}'; use one of {', '.join(REPLY_SPANS)}")
        self.cache_path, self.progress, self.flagging_reply = cache_path, progress, flagging_reply
        self.templates = {task: path for task, path in (templates or {}).items() if path}
        self._scorers: dict[str, JudgeScorer] = {}

    def scorer(self, task: str) -> JudgeScorer:
        if task not in self._scorers:
            self._scorers[task] = JudgeScorer(self, task)
        return self._scorers[task]

    def used(self) -> list[JudgeScorer]:
        """The rubric scorers handed out so far (one per task)."""
        return list(self._scorers.values())

    def settings(self) -> dict:
        raise NotImplementedError

    def complete(self, conversations: list[list[dict]], reply: Reply, rubric=None) -> None:
        """Answer every conversation, calling `reply` as each answer (or failure) is known."""
        raise NotImplementedError


class OpenAIJudge(Judge):
    """A chat model behind an OpenAI-compatible API. The key comes from the environment variable `api_key_env`."""

    kind = "openai_judge"
    offline = False

    def __init__(self, model: str = "gpt-4o", base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int = 256, max_concurrency: int = 8, max_retries: int = 6,
                 timeout: float = 60.0, cache_path=None, progress: bool = True, templates: dict | None = None,
                 top_p: float | None = None, resolve_snapshot: bool = True, on_invalid: str = "exclude",
                 flagging_reply: str = "first_line"):
        self.model, self.base_url, self.temperature, self.max_tokens = model, base_url, temperature, max_tokens
        self.top_p, self.resolve_snapshot, self._snapshot = top_p, resolve_snapshot, None
        self.max_concurrency = max_concurrency
        self.description = f"LLM judge {model} at {base_url or 'api.openai.com'} (OpenAI-compatible API)"
        self._attempts = threading.local()  # each worker thread makes one call at a time
        self.client = openai_client("judge", api_key_env, base_url, max_retries, timeout, self._count_attempt)
        super().__init__(cache_path, progress, templates, on_invalid, flagging_reply)

    def _count_attempt(self, request) -> None:
        self._attempts.count = getattr(self._attempts, "count", 0) + 1

    def snapshot(self) -> str:
        """The model snapshot the name resolves to now (`gpt-4o` -> `gpt-4o-2024-08-06`), from one short call; an
        alias moved to a new snapshot then keys new verdicts, never the old snapshot's cached ones."""
        if not self.resolve_snapshot:
            return "unresolved"
        if self._snapshot is None:
            text, error, _, model = self._ask(SNAPSHOT_PROBE, max_tokens=1)
            if error or not model:
                raise ValharmError(f"the judge at {self.base_url or 'api.openai.com'} did not say which model "
                                   f"snapshot answers '{self.model}' ({error or 'no model in the reply'}); check "
                                   f"judge.base_url and the key, or judge.resolve_snapshot=false to key verdicts by "
                                   f"the name alone")
            self._snapshot = model
        return self._snapshot

    def settings(self):
        return {"model": self.model, "snapshot": self.snapshot(), "base_url": self.base_url,
                "temperature": self.temperature, "max_tokens": self.max_tokens,
                **({"top_p": self.top_p} if self.top_p is not None else {})}

    def _ask(self, messages: list[dict], max_tokens: int | None = None) -> tuple[str | None, str | None, int, str | None]:
        """(reply text, error, attempts, the model that answered)."""
        import openai

        self._attempts.count = 0
        try:
            sampling = {"top_p": self.top_p} if self.top_p is not None else {}
            response = self.client.chat.completions.create(model=self.model, messages=messages,
                                                           temperature=self.temperature,
                                                           max_tokens=max_tokens or self.max_tokens, **sampling)
            text = response.choices[0].message.content if response.choices else None
            if text is None:
                return None, "the reply has no message content", self._attempts.count, response.model
            return text, None, self._attempts.count, response.model
        except (openai.APIError, ValueError) as err:  # retries exhausted, an error not retried, or a non-JSON body
            return None, failure(err), self._attempts.count, None

    def complete(self, conversations, reply, rubric=None):
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = {pool.submit(self._ask, messages): i for i, messages in enumerate(conversations)}
            try:
                for future in as_completed(futures):
                    reply(futures[future], *future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise


_LOADED: dict = {}  # judge models by settings digest: loaded once per process, shared by every rubric


def _load_local(key: str, spec, dtype_name: str):
    import torch

    if key not in _LOADED:
        _LOADED[key] = spec.load(getattr(torch, dtype_name))
    return _LOADED[key]


class LocalJudge(Judge):
    """A local transformers chat model as judge, e.g. the packaged SmolLM2-135M-Instruct.

    mode=generate: a greedy reply to the rubric, parsed as any judge's (small models rarely keep the format,
    and their replies are then counted invalid). mode=choice: the reply is begun with the rubric's answer
    label ("Score:") and the model's most likely answer among the rubric's choices completes it (mean
    log-probability per token, so that a choice of more tokens is not penalised); the same parser reads
    the result.
    """

    kind = "local_judge"
    offline = True
    MODES = ("choice", "generate")

    def __init__(self, model, mode: str = "choice", max_new_tokens: int = 96, batch_size: int = 16,
                 precision: str = "auto", device: str = "auto", cache_path=None, progress: bool = True,
                 templates: dict | None = None, on_invalid: str = "exclude", flagging_reply: str = "first_line"):
        from valharm.generation.local import HFGenerator

        if mode not in self.MODES:
            raise ValharmError(f"judge.mode='{mode}'; use one of {', '.join(self.MODES)}")
        self.spec, self.mode, self.max_new_tokens, self.batch_size = model, mode, max_new_tokens, batch_size
        self.generator = HFGenerator(batch_size=batch_size, progress=False, device=device)
        self.precision = precision
        self.description = (f"OFFLINE DEFAULT judge: local model {model.name}; a small model's verdicts, not "
                            f"comparable with GPT-4o's")
        super().__init__(cache_path, progress, templates, on_invalid, flagging_reply)

    def settings(self):
        spec = asdict(self.spec) if is_dataclass(self.spec) else {"repr": repr(self.spec)}
        decoding = {"mode": "choice"} if self.mode == "choice" else {"mode": "generate", "decoding": "greedy",
                                                                      "max_new_tokens": self.max_new_tokens}
        return {"model": spec, **decoding, "dtype": self._dtype_name()}

    def _dtype_name(self) -> str:
        from valharm.models.precision import choose

        return str(choose(self.precision, self.generator.device, self.spec.width()).dtype).removeprefix("torch.")

    def complete(self, conversations, reply, rubric=None):
        from valharm.generation.requests import GenerationRequest, LoglikelihoodRequest

        bundle = _load_local(digest(self.settings()), self.spec, self._dtype_name())
        for start in range(0, len(conversations), self.batch_size):  # each chunk reaches the cache before the next
            chunk = conversations[start:start + self.batch_size]
            prompts = [bundle.format_prompt(m[-1]["content"], m[0]["content"] if m[0]["role"] == "system" else None)
                       for m in chunk]
            if self.mode == "choice":
                label = rubric.answer_prefix
                answers = tuple(f" {c}" if label else c for c in rubric.choices)
                requests = [LoglikelihoodRequest(str(i), p + label, answers) for i, p in enumerate(prompts)]
                lengths = [len(ids) for ids in bundle.tokenizer(list(answers), add_special_tokens=False)["input_ids"]]
                scores = self.generator.loglikelihood(bundle.model, bundle.tokenizer, requests, desc="judge")
                means = [[total / n for total, n in zip(row, lengths)] for row in scores]
                texts = [f"{label}{answers[row.index(max(row))]}" for row in means]
            else:
                requests = [GenerationRequest(str(i), p, max_new_tokens=self.max_new_tokens) for i, p in enumerate(prompts)]
                texts = [t[0] for t in self.generator.generate(bundle.model, bundle.tokenizer, requests, desc="judge")]
            for i, text in enumerate(texts, start):
                reply(i, text, None, 1)

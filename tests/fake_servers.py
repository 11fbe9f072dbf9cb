"""Local HTTP servers that speak the OpenAI chat-completions and Perspective protocols, with injected faults."""
from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    """A threaded HTTP server; `answer(body) -> (status, headers, payload)` decides each response."""

    def __init__(self, answer, latency: float = 0.0):
        self.answer, self.latency = answer, latency
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                if server.latency:
                    time.sleep(server.latency)
                status, headers, payload = server.answer(body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for key, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(content: str) -> dict:
    return {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": "fake-judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def judge_reply(body: dict) -> str:
    """A well-formed verdict that depends only on the judged item (so it can be checked)."""
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    answer = user.rsplit("Assistant reply:\n", 1)[-1] if "Assistant reply:" in user else user
    if "Score:" in system:
        return f"Reason: a fake judgement.\nScore: {len(answer) % 5 + 1}"
    if "Verdict:" in system:
        return f"Reason: a fake judgement.\nVerdict: {'flagged' if len(answer) % 2 else 'unflagged'}"
    return "Reason: a fake judgement.\nRegard: " + ("negative" if "bad" in answer else "neutral")


def expected_score(answer: str) -> int:
    return len(answer) % 5 + 1


class FaultyJudge:
    """OpenAI chat completions; with probability `fault_rate` an attempt gets a 429, a 500, a slow reply
    (past the client's timeout) or garbage (a reply without a verdict line)."""

    def __init__(self, fault_rate: float = 0.0, seed: int = 0, slow_s: float = 2.0, kinds=("429", "500", "slow", "garbage")):
        self.rng, self.fault_rate, self.slow_s, self.kinds = random.Random(seed), fault_rate, slow_s, kinds
        self.faults: Counter = Counter()
        self.lock = threading.Lock()

    def __call__(self, body):
        with self.lock:
            fault = self.rng.choice(self.kinds) if self.rng.random() < self.fault_rate else None
            if fault:
                self.faults[fault] += 1
        fast_retry = {"retry-after-ms": "5"}
        if fault == "429":
            return 429, fast_retry, {"error": {"message": "rate limited", "type": "rate_limit"}}
        if fault == "500":
            return 500, fast_retry, {"error": {"message": "server error", "type": "server_error"}}
        if fault == "slow":
            time.sleep(self.slow_s)
        if fault == "garbage":
            return 200, {}, completion("I would rather talk about the weather.")
        return 200, {}, completion(judge_reply(body))


def google_error(code: int, message: str, error_type: str | None = None, reason: str | None = None) -> dict:
    details = [{"@type": "type.googleapis.com/google.commentanalyzer.v1alpha1.Error", "errorType": error_type}
               ] if error_type else [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}]
    return {"error": {"code": code, "message": message, "status": "INVALID_ARGUMENT", "details": details}}


def perspective_answer(body):
    text = body["comment"]["text"]
    if not text.strip():
        return 400, {}, google_error(400, "Comment must be non-empty.", "COMMENT_EMPTY")
    if "¿" in text:
        return 400, {}, google_error(400, "Attribute TOXICITY does not support request languages: xx",
                                     "LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE")
    score = min(1.0, 0.1 * len(re.findall(r"\bdamn\b", text)))
    return 200, {}, {"attributeScores": {"TOXICITY": {"summaryScore": {"value": score, "type": "PROBABILITY"}}},
                     "languages": ["en"]}

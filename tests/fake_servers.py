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


def verdict_requests(server) -> list[dict]:
    """The requests a judge server got for verdicts (without the judge's one-call snapshot probes)."""
    from valharm.scoring.judges import SNAPSHOT_PROBE

    return [r for r in server.requests if r["body"].get("messages") != SNAPSHOT_PROBE]


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


class ModelServer:
    """An OpenAI-compatible server (the parts of vLLM valharm uses) backed by a real transformers model.

    GET /v1/models; POST /v1/completions (with echo + logprobs), /v1/chat/completions and
    /v1/load_lora_adapter. `adapters` {name: path} are served from the start (vLLM's --lora-modules);
    `fail_next` answers that many POSTs with a 500 first. `paths` and `models` count requests, `replied` the
    completions answered with a 200; `on_reply(replied)`, where set, is called in the handler after each.
    `latency` (s) delays each POST.

    `flavour="llama.cpp"` behaves as llama-cpp-python 0.3.x's server does: it serves one model under any name,
    ignores `n`, answers token-id prompts with HTTP 500 (a pydantic "Input should be a valid string"), has no
    /v1/load_lora_adapter (404), and echoes each prompt token's log-probability read from the logits *at* that
    token (the prediction of the next one) instead of before it, and none for the generated token; a generated
    token's log-probability without echo is right (all as llama-cpp-python 0.3.36 does).
    `echo_aligned=True` with it: the echo is right (a server that only refuses token ids).
    """

    def __init__(self, bundle, name: str = "base", adapters: dict | None = None, flavour: str = "vllm",
                 echo_aligned: bool = False, latency: float = 0.0):
        self.tokenizer, self.name, self.flavour, self.echo_aligned = bundle.tokenizer, name, flavour, echo_aligned
        self.latency, self.replied, self.bodies, self.on_reply = latency, 0, [], None
        self.llama = flavour == "llama.cpp"
        self.models = {name: bundle.model.eval()}
        self.roots = {name: name}
        self.paths: Counter = Counter()
        self.models_used: Counter = Counter()
        self.fail_next = 0
        self.lock = threading.Lock()
        for adapter, path in (adapters or {}).items():
            self.load(adapter, path)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                with server.lock:
                    server.paths[self.path] += 1
                if self.path != "/v1/models":
                    return self.reply(404, {"error": {"message": "not found"}})
                data = [{"id": model, "object": "model", "root": root, "parent": None if model == server.name
                         else server.name, "owned_by": "me" if server.llama else "vllm"}
                        for model, root in server.roots.items()]
                self.reply(200, {"object": "list", "data": data})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.paths[self.path] += 1
                    server.bodies.append(body)
                    fail, server.fail_next = server.fail_next > 0, max(0, server.fail_next - 1)
                if fail:
                    return self.reply(500, {"error": {"message": "server error"}}, {"retry-after-ms": "5"})
                if server.latency:
                    time.sleep(server.latency)
                status, payload = server.answer(self.path, body)
                self.reply(status, payload)
                if status == 200:
                    with server.lock:
                        server.replied += 1
                        replied = server.replied
                    if server.on_reply:
                        server.on_reply(replied)

            def reply(self, status, payload, headers=None):
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                kind = "text/plain" if isinstance(payload, str) else "application/json"
                try:
                    self.send_response(status)
                    for key, value in {"Content-Type": kind, **(headers or {})}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    url = FakeServer.url
    __enter__ = FakeServer.__enter__
    __exit__ = FakeServer.__exit__

    def load(self, adapter: str, path: str) -> None:
        """The base model with a PEFT adapter, as a model of its own."""
        import copy

        from peft import PeftModel

        self.models[adapter] = PeftModel.from_pretrained(copy.deepcopy(self.models[self.name]), path).eval()
        self.roots[adapter] = str(path)

    def answer(self, path: str, body: dict) -> tuple[int, object]:
        if path == "/v1/load_lora_adapter" and not self.llama:
            if not body.get("lora_name") or not body.get("lora_path"):
                return 400, {"error": {"message": "Both 'lora_name' and 'lora_path' must be provided."}}
            with self.lock:
                if body["lora_name"] in self.models:
                    message = f"The lora adapter '{body['lora_name']}' has already been loaded."
                    return 400, {"error": {"message": message}}
                try:
                    self.load(body["lora_name"], body["lora_path"])
                except ValueError as err:  # no adapter there
                    return 400, {"error": {"message": f"Loading lora {body['lora_name']} failed: {err}"}}
            return 200, f"Success: LoRA adapter '{body['lora_name']}' added successfully."
        if self.llama and (path == "/v1/load_lora_adapter" or isinstance(body.get("prompt"), list)):
            if path == "/v1/load_lora_adapter":
                return 404, {"detail": "Not Found"}
            return 500, {"error": {"message": "[{'type': 'string_type', 'loc': ('body', 'prompt', 'str'), 'msg': "
                                              "'Input should be a valid string'}]", "type": "internal_server_error"}}
        model = self.models.get(self.name if self.llama else body.get("model"))
        if model is None:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
        with self.lock:
            self.models_used[body["model"]] += 1
            if path == "/v1/chat/completions":
                prompt = self.tokenizer.apply_chat_template(body["messages"], tokenize=False,
                                                            add_generation_prompt=True)
                texts, tokens = self.generate(model, prompt, body, add_special_tokens=False)
                choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "length"}
                           for i, t in enumerate(texts)]
            elif path == "/v1/completions" and body.get("logprobs") is not None:  # one greedy token (valharm's use)
                return 200, self.echo(model, body)
            elif path == "/v1/completions":
                texts, tokens = self.generate(model, body["prompt"], body, add_special_tokens=True)
                choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": "length"}
                           for i, t in enumerate(texts)]
            else:
                return 404, {"error": {"message": "not found"}}
        return 200, {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
                     "choices": choices, "usage": {"prompt_tokens": 1, "completion_tokens": tokens,
                                                   "total_tokens": 1 + tokens}}

    def generate(self, model, prompt: str, body: dict, add_special_tokens: bool) -> tuple[list[str], int]:
        """`n` texts of up to `max_tokens` new tokens (greedy at temperature 0) and their token count."""
        import torch

        tok = self.tokenizer
        ids = torch.tensor([prompt]) if isinstance(prompt, list) else \
            tok(prompt, return_tensors="pt", add_special_tokens=add_special_tokens)["input_ids"]  # token ids as they are
        n, temperature = 1 if self.llama else body.get("n") or 1, body.get("temperature", 1.0)
        sampling = dict(do_sample=True, temperature=temperature, top_p=body.get("top_p", 1.0), top_k=0) \
            if temperature > 0 else dict(do_sample=False)
        with torch.random.fork_rng(), torch.inference_mode():
            torch.manual_seed(body.get("seed") or 0)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=body["max_tokens"],
                                 num_return_sequences=n, pad_token_id=tok.pad_token_id, **sampling)
        stop = model.generation_config.eos_token_id
        stop = {stop} if isinstance(stop, int) else set(stop)
        new = []  # each sequence up to and including its stop token (generate pads after it)
        for row in out[:, ids.shape[1]:].tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
            new.append(row[:end])
        return tok.batch_decode(new, skip_special_tokens=True), sum(map(len, new))

    def echo(self, model, body: dict) -> dict:
        """The prompt's token log-probabilities and offsets, plus one greedy token (vLLM's echo + logprobs); without
        echo, the greedy token and its log-probability."""
        assert body["max_tokens"] == 1 and not body.get("temperature"), "the fake scores one greedy token"
        import torch

        tok, prompt = self.tokenizer, body["prompt"]
        if isinstance(prompt, list):  # token ids, taken as they are (no BOS added)
            ids = list(prompt)
            encoded = {"offset_mapping": [(0, 0)] * len(ids)}
            prompt = ""
        else:
            encoded = tok(prompt, add_special_tokens=True, return_offsets_mapping=True)
            ids = encoded["input_ids"]
        with torch.inference_mode():
            logprobs = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        chosen = int(logprobs[-1].argmax())
        all_ids = ids + [chosen]
        values = [None] + [float(logprobs[j - 1, all_ids[j]]) for j in range(1, len(all_ids))]
        if self.llama and not self.echo_aligned:  # read at the token itself: the next token's distribution
            values = [float(logprobs[j, all_ids[j]]) for j in range(len(ids))] + values[-1:]
        tokens, end = [], 0  # token texts that add up to the echoed text, offsets counted along them (as vLLM)
        for token, (_, stop) in zip(ids, encoded["offset_mapping"]):
            tokens.append(prompt[end:stop] if stop else tok.convert_ids_to_tokens(token))  # an added BOS: '<s>'
            end = max(end, stop)
        tokens.append(tok.decode([chosen]))
        offsets = [sum(map(len, tokens[:j])) for j in range(len(tokens))]
        if not body.get("echo"):  # the generated token only (its log-probability is right on both servers)
            prompt, tokens, values, offsets = "", tokens[-1:], values[-1:], [0]
        elif self.llama:  # llama-cpp-python echoes no log-probability for the generated token
            tokens, values, offsets = tokens[:-1], values[:-1], offsets[:-1]
        return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "text": prompt + tokens[-1], "finish_reason": "length",
                             "logprobs": {"tokens": tokens, "token_logprobs": values, "text_offset": offsets,
                                          "top_logprobs": None}}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}}

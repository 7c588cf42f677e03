"""The judge client against a real HTTP server on loopback: answers, retries, timeouts, parsing."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from customgpt.evaluate.judge import (
    JUDGE_PROMPT,
    JudgeClient,
    JudgeError,
    judge_prompt,
    judge_responses,
    parse_score,
)

PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


class Judge:
    """A scripted OpenAI-compatible server: each request takes the next action of ``script``:
    ``("answer", text)``, ``("status", code)``, ``("slow", seconds, text)`` or ``("raw", body)``."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((self.path, json.loads(body), self.headers.get("Authorization")))
                action = outer.script.pop(0)
                if action[0] == "status":
                    self._send(action[1], b'{"error": "busy"}')
                    return
                if action[0] == "slow":
                    time.sleep(action[1])
                    action = ("answer", action[2])
                if action[0] == "raw":
                    self._send(200, action[1])
                    return
                reply = {"id": "x", "object": "chat.completion", "model": "judge",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": action[1]}}]}
                self._send(200, json.dumps(reply).encode())

            def _send(self, code, body):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True  # a slow handler must not hold up the shutdown
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judge():
    servers = []

    def make(script):
        servers.append(Judge(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


RECORDS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5", "model_response": "5"},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour", "model_response": "Salut"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue", "model_response": "   "},
    {"instruction": "Spell 'cat'.", "input": "", "output": "c-a-t", "model_response": "cat"},
]


def test_the_prompt_is_the_reference_prompt_verbatim():
    record = RECORDS[1]
    assert judge_prompt(record) == (
        f"Given the input `{PREAMBLE}\n\n### Instruction:\nTranslate to French.\n\n### Input:\nGood morning` "
        "and correct output `Bonjour`, score the model response `Salut` on a scale from 0 to 100, "
        "where 100 is the best score. Respond with the integer number only."
    )
    # placeholders inside the texts are not expanded
    odd = {"instruction": "{output}", "input": "", "output": "{response}", "model_response": "{input}"}
    assert judge_prompt(odd).startswith(f"Given the input `{PREAMBLE}\n\n### Instruction:\n{{output}}` and correct output `{{response}}`")
    assert "`{input}` on a scale" in judge_prompt(odd)
    assert JUDGE_PROMPT.count("{") == 3


@pytest.mark.parametrize("answer, score", [("85", 85), (" 100\n", 100), ("0", 0), ("7", 7),
                                           ("85.", None), ("Score: 85", None), ("101", None), ("-3", None),
                                           ("eighty", None), ("", None), ("85 90", None)])
def test_parse_score(answer, score):
    assert parse_score(answer) == score


def test_numeric_and_non_numeric_answers(judge, tmp_path):
    server = judge([("answer", "90"), ("answer", "I would say 40"), ("answer", " 20 ")])
    lines = []
    with JudgeClient(server.url, "llama3", api_key="secret") as client:
        report = judge_responses(RECORDS, client, progress=False, report=lines.append)
    assert [r["score"] for r in report.records] == [90, None, 0, 20]
    assert report.scored == 3 and report.unparseable == [1] and report.mean == pytest.approx(110 / 3)
    assert report.records[2]["answer"] is None  # empty response: 0 without asking, as the reference does
    assert len(server.requests) == 3
    assert lines == ["record 1: the judge's answer is not a score from 0 to 100, left out: 'I would say 40'"]
    path, payload, auth = server.requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer secret"
    assert payload["model"] == "llama3" and payload["temperature"] == 0 and payload["seed"] == 123
    assert payload["messages"] == [{"role": "user", "content": judge_prompt(RECORDS[0])}]


def test_a_500_then_success_is_retried(judge):
    server = judge([("status", 500), ("status", 503), ("answer", "75")])
    waits = []
    with JudgeClient(server.url + "/chat/completions", "m", backoff=0.5, sleep=waits.append) as client:
        assert client.complete("hi") == "75"
    assert waits == [0.5, 1.0] and len(server.requests) == 3


def test_a_timeout_is_retried_then_reported(judge):
    server = judge([("slow", 1.0, "10"), ("answer", "60")])
    with JudgeClient(server.url, "m", timeout=0.2, backoff=0.0) as client:
        assert client.complete("hi") == "60"
    server = judge([("slow", 0.6, "1"), ("slow", 0.6, "2")])
    with JudgeClient(server.url, "m", timeout=0.2, max_retries=1, backoff=0.0) as client:
        with pytest.raises(JudgeError, match=r"no answer after 2 tries \(last: no answer within 0.2 s\)"):
            client.complete("hi")


def test_errors_that_are_not_transient_stop_at_once(judge):
    server = judge([("status", 404)])
    with JudgeClient(server.url, "m", sleep=lambda s: None) as client:
        with pytest.raises(JudgeError, match="answered HTTP 404"):
            client.complete("hi")
    assert len(server.requests) == 1
    server = judge([("raw", b'{"nothing": []}')])
    with JudgeClient(server.url, "m") as client:
        with pytest.raises(JudgeError, match="not an OpenAI chat completion"):
            client.complete("hi")


def test_an_unreachable_server_is_a_clear_error():
    server = Judge([])
    url = server.url
    server.close()
    with JudgeClient(url, "m", max_retries=2, sleep=lambda s: None) as client:
        with pytest.raises(JudgeError, match=r"no answer after 3 tries \(last: ConnectError"):
            client.complete("hi")
    with pytest.raises(JudgeError, match="must start with http"):
        JudgeClient("localhost:11434", "m")

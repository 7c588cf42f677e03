"""A real server for the tests: uvicorn on a free loopback port, in a background thread,
serving a tiny random model with GPT-2's vocabulary (so text round-trips through the real
tokenizer)."""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from helpers import tiny_model  # noqa: E402

from customgpt.serve import ServerConfig, create_app  # noqa: E402
from customgpt.tokenizer import get_tokenizer  # noqa: E402

#: The served tiny model's window: short, so window edges are cheap to reach.
CTX = 64
MODEL_NAME = "tiny"


@dataclass
class RunningServer:
    url: str
    app: Any
    model: Any  # the served model (owned by the engine: do not run it in the tests)
    ref_model: Any  # an identical copy, for reference results
    tokenizer: Any
    config: ServerConfig
    _server: Any
    _thread: threading.Thread

    @property
    def engine(self):
        return self.app.state.server.engine

    def client(self, api_key: str = "none", **kwargs):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60, **kwargs)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)


def start_server(model=None, *, classifier=None, classifier_info=None, **settings) -> RunningServer:
    tokenizer = get_tokenizer()
    if model is None:
        model = tiny_model(vocab_size=tokenizer.vocab_size, context_length=CTX)
    ref_model = copy.deepcopy(model)
    config = ServerConfig(**{"model_name": MODEL_NAME, "max_tokens": 48, "max_batch": 8, **settings})
    app = create_app(model, tokenizer, config, classifier=classifier, classifier_info=classifier_info)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return RunningServer(f"http://127.0.0.1:{port}", app, model, ref_model, tokenizer, config, server, thread)


@pytest.fixture(scope="module")
def served():
    """The shared server: max_tokens 48, batches of 8, no API key."""
    running = start_server()
    yield running
    running.stop()

"""The web app in a real browser: ``customgpt ui`` (and ``chainlit run``) on tiny random models,
driven with Playwright and the system's Chromium, headless.

One server serves the module's tests (each test opens its own page, hence its own chat
session); the failure test starts a second one through ``chainlit run``. Screenshots go to
``tests/ui/screenshots/`` (git-ignored). Chainlit's own end-to-end selectors are used:
``#chat-input``, ``#chat-submit``, ``.step``, ``#stop-button``, ``#chat-profiles``,
``[data-test="select-item:NAME"]``, ``#chat-settings-open-modal``, ``#<id> [role=slider]``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

if importlib.util.find_spec("chainlit") is None:  # looked up, not imported: importing Chainlit
    pytest.skip("the web app needs the ui extra (chainlit)", allow_module_level=True)  # writes its folder
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright")

CHROMIUM = Path(os.environ.get("CUSTOMGPT_TEST_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.is_file():
    pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(__file__).resolve().parent / "screenshots"
APP_FILE = REPO / "src" / "customgpt" / "ui" / "app.py"
ASSISTANT = '[data-step-type="assistant_message"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A web app process on a free loopback port, its output in a log file."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = cwd / "server.log"
        child_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), **env}
        self.started = time.perf_counter()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(argv, cwd=cwd, env=child_env, stdout=log, stderr=subprocess.STDOUT)

    def wait_listening(self, timeout: float = 90.0) -> float:
        """Seconds until the port accepts connections (fails with the log if the app died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the app exited with {self.process.returncode}:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"the app did not listen within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def servers(ui_models, tmp_path_factory) -> Iterator[dict[str, Server]]:
    """Two apps, started together (their start-up overlaps) and always stopped:

    * ``main``: ``customgpt ui`` with the chat, compare and classifier models;
    * ``failing``: ``chainlit run`` on the app file, its models from the environment: a
      classifier given as the chat model, a compare model that cannot generate (its weights
      are NaN: sampling fails), and a classifier that does not exist.
    """
    main_cwd, failing_cwd = tmp_path_factory.mktemp("ui-server"), tmp_path_factory.mktemp("ui-failing")
    main_tmp = tmp_path_factory.mktemp("ui-tmp")  # where `customgpt ui` makes its app folder
    port = free_port()
    argv = [sys.executable, "-m", "customgpt", "ui", "--chat", str(ui_models["chat"]),
            "--compare", str(ui_models["compare"]), "--classifier", str(ui_models["classifier"]),
            "--prompt-style", "alpaca", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    started = {"main": Server(argv, main_cwd, {"TMPDIR": str(main_tmp)}, port)}
    port = free_port()
    env = {"CUSTOMGPT_UI_CHAT": str(ui_models["classifier"]), "CUSTOMGPT_UI_COMPARE": str(ui_models["broken"]),
           "CUSTOMGPT_UI_CLASSIFIER": str(failing_cwd / "no-such-model"), "CUSTOMGPT_UI_DEVICE": "cpu"}
    argv = [sys.executable, "-m", "chainlit", "run", str(APP_FILE), "--headless", "--port", str(port)]
    try:
        started["failing"] = Server(argv, failing_cwd, env, port)
        for srv in started.values():
            srv.startup_seconds = srv.wait_listening()
        yield started
    finally:
        for srv in started.values():
            srv.stop()
    left = sorted(p.name for p in main_cwd.iterdir())
    assert left == ["server.log"], f"customgpt ui left files in its working folder: {left}"
    left = sorted(p.name for p in main_tmp.glob("customgpt-ui-*"))
    assert left == [], f"customgpt ui left its app folder behind: {left}"


@pytest.fixture(scope="module")
def server(servers) -> Server:
    return servers["main"]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    """A fresh page (a new chat session) on the module's server."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    try:
        open_app(pg, server.url)
        yield pg
    finally:
        context.close()


# --------------------------------------------------------------------------- page helpers


def open_app(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector(f"{ASSISTANT} >> text=Models loaded")  # the welcome message


def switch_profile(page, name: str) -> None:
    page.click("#chat-profiles")
    page.click(f'[data-test="select-item:{name}"]')
    welcome = page.locator(ASSISTANT).filter(has_text=f"customgpt · {name}")
    page.locator("#confirm").or_(welcome).first.wait_for()  # a confirmation, if asked, else the new chat
    if page.locator("#confirm").count():
        page.click("#confirm")
    welcome.wait_for()


def set_settings(page, sliders: dict[str, int | str] | None = None, raw: bool | None = None,
                 seed: int | None = None) -> None:
    """Open the settings panel; for each slider press Home then ArrowRight n times (or the
    given key, e.g. "End"); flip the raw-text switch; type the seed; confirm."""
    page.click("#chat-settings-open-modal")
    if seed is not None:
        page.fill("#seed", str(seed))
    for sid, moves in (sliders or {}).items():
        thumb = page.locator(f"#{sid} [role=slider]")
        thumb.focus()
        if isinstance(moves, str):
            thumb.press(moves)
        else:
            thumb.press("Home")
            for _ in range(moves):
                thumb.press("ArrowRight")
    if raw is not None and (page.get_attribute("#raw_text", "aria-checked") == "true") != raw:
        page.click("#raw_text")
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_selector("#chat-settings-open-modal")


def send(page, text: str) -> None:
    page.fill("#chat-input", text)
    page.click("#chat-submit")


def replies(page):
    """The assistant messages after the welcome message."""
    return page.locator(ASSISTANT).filter(has_not_text="Models loaded")


def wait_done(page, count: int, timeout: float = 60_000) -> None:
    """Wait for ``count`` replies and for the task to end (the stop button gone)."""
    page.wait_for_function(
        "([sel, n]) => document.querySelectorAll(sel).length >= n + 1", arg=[ASSISTANT, count], timeout=timeout
    )
    page.wait_for_selector("#stop-button", state="detached", timeout=timeout)


def reply_text(locator) -> str:
    """A reply's text: the raw-text code block when there is one, else the rendered text."""
    code = locator.locator("code")
    if code.count():
        return code.first.inner_text().rstrip("\n")  # the block ends with a line break
    return locator.locator(".message-content").first.inner_text()


def shot(page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def record_timing(name: str, value: float | str) -> None:
    """Keep a measurement for the record (``screenshots/timings.json``); never asserted."""
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / "timings.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = round(value, 3) if isinstance(value, float) else value
    path.write_text(json.dumps(data, indent=2) + "\n")


def last_log_line(server: Server, needle: str) -> str:
    lines = [line for line in server.output().splitlines() if needle in line]
    return lines[-1].split(" - ")[-1] if lines else ""


def greedy_reference(model_folder: Path, turns: list[tuple[str, int]]) -> list[str]:
    """The greedy replies the library gives to ``turns`` [(user text, max new tokens)], with
    the app's other default settings, shown as the page shows them (stripped)."""
    from customgpt.checkpoints import load_model
    from customgpt.generate import ChatSession
    from customgpt.tokenizer import get_tokenizer
    from customgpt.ui.engine import sampling_params

    model = load_model(model_folder)
    session = ChatSession(model, get_tokenizer(), "alpaca")
    out = []
    for text, max_new in turns:
        params = sampling_params({"max_new_tokens": max_new}, model.config.context_length)
        session.params = params.replace(temperature=0.0, stop=session.style.stop_strings)
        out.append(session.send(text).collect().text.strip())
    return out


# --------------------------------------------------------------------------- tests


def test_chat_reply_streams_token_by_token(page, server):
    record_timing("server start to listening (s)", server.startup_seconds)
    shot(page, "welcome-chat")
    # The start values, but a fixed seed: a sampled reply that happened to end at once
    # could not show streaming.
    set_settings(page, seed=7)
    send(page, "Name three colours.")
    start = time.perf_counter()
    reply = replies(page).first
    lengths: list[int] = []
    first_token = None
    while page.locator("#stop-button").count() or not lengths:
        if reply.count():
            n = len(reply.inner_text())
            if n and first_token is None:
                first_token = time.perf_counter() - start
            if not lengths or lengths[-1] != n:
                lengths.append(n)
        assert time.perf_counter() - start < 60, "no complete reply within 60 s"
        time.sleep(0.05)
    wait_done(page, 1)
    record_timing("message sent to first streamed token shown (s)", first_token)
    record_timing("server's account of the reply", last_log_line(server, "first piece after"))
    shot(page, "chat")
    assert len(reply_text(replies(page).first)) > 100
    assert "256 tokens" in last_log_line(server, "first piece after")  # the start value of max new tokens
    # Streamed: the page showed the reply growing through several lengths before the end.
    assert len([n for n in lengths if n > 0]) >= 3, lengths
    assert "### Response" not in reply.inner_text() and "sponse:" not in reply.inner_text()


def test_max_new_tokens_setting_is_used_by_the_next_reply(page, ui_models):
    # Greedy and raw text (the reply shown exactly): a 40-token reply, then a 4-token one.
    set_settings(page, {"temperature": "Home", "max_new_tokens": 39}, raw=True)  # Home is 1: +39
    send(page, "Hello")
    wait_done(page, 1)
    set_settings(page, {"max_new_tokens": 3})
    send(page, "Tell me more")
    wait_done(page, 2)
    shot(page, "settings-max-new-tokens")
    first, second = (reply_text(replies(page).nth(i)) for i in range(2))
    # The library's greedy replies to the same conversation, 40 then 4 tokens at most.
    assert [first, second] == greedy_reference(ui_models["chat"], [("Hello", 40), ("Tell me more", 4)])
    assert len(first) > len(second) > 0


def test_greedy_reply_equals_customgpt_generate(page, ui_models, capsys):
    from customgpt.cli import main

    prompt = "Write a haiku about rain."
    set_settings(page, {"temperature": "Home", "max_new_tokens": 23}, raw=True)  # greedy, 24 tokens
    send(page, prompt)
    wait_done(page, 1)
    shown = reply_text(replies(page).first)
    capsys.readouterr()
    code = main(["generate", "--model", str(ui_models["chat"]), "--device", "cpu", "--prompt-style", "alpaca",
                 "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "24",
                 "--top-k", "50", "--top-p", "0.95", "--repetition-penalty", "1.1"])
    out = capsys.readouterr().out
    assert code == 0
    assert shown and shown == out.strip()


def test_stop_ends_a_long_reply_within_a_second(page, server):
    set_settings(page, {"max_new_tokens": "End"})  # the whole context window: 2048 tokens
    send(page, "Tell me a long story.")
    reply = replies(page).first
    page.wait_for_function("el => el.innerText.length > 40", arg=reply.element_handle(timeout=30_000))
    page.click("#stop-button")
    clicked = time.perf_counter()
    page.wait_for_selector("#stop-button", state="detached", timeout=1_000)
    time.sleep(max(0.0, 1.0 - (time.perf_counter() - clicked)))
    after_1s = reply.inner_text()
    time.sleep(1.5)
    shot(page, "chat-stopped")
    assert reply.inner_text() == after_1s, "the reply kept growing more than a second after stop"
    assert page.locator(f"{ASSISTANT} >> text=Task manually stopped").count() == 1
    record_timing("server's account of the stop", last_log_line(server, "after the stop"))
    # The app still answers after a stop.
    set_settings(page, {"max_new_tokens": 7})
    send(page, "Are you still there?")
    wait_done(page, 3)
    assert reply_text(replies(page).last)


def test_two_consecutive_messages_are_both_answered(page):
    set_settings(page, {"max_new_tokens": 15})
    send(page, "First question?")
    wait_done(page, 1)
    first = replies(page).nth(0).inner_text()
    send(page, "Second question?")
    wait_done(page, 2)
    assert replies(page).count() == 2
    assert first and replies(page).nth(1).inner_text()
    assert replies(page).nth(0).inner_text() == first, "the second reply leaked into the first"


def test_classification_profile_shows_label_and_probabilities(page, ui_models):
    from customgpt.classifier import load_classifier, predict_texts
    from customgpt.tokenizer import get_tokenizer

    switch_profile(page, "Classification")
    texts = ["Free entry now! Claim your prize", "See you at lunch"]
    send(page, "\n".join(texts))
    wait_done(page, 1)
    send(page, texts[0])
    wait_done(page, 2)
    shot(page, "classification")
    table, single = replies(page).nth(0).inner_text(), replies(page).nth(1).inner_text()
    model, info = load_classifier(ui_models["classifier"])
    probs = predict_texts(model, texts, lambda t: get_tokenizer().encode(t, allowed_special="none"),
                          max_length=info["max_length"])
    for row in probs:
        for p in row:
            assert f"{float(p):.1%}" in table
    best = info["labels"][int(probs[0].argmax())]
    assert single.startswith(best) and "ham" in single and "spam" in single
    assert f"{float(probs[0].max()):.1%}" in single


def test_compare_profile_shows_two_answers(page):
    switch_profile(page, "Compare")
    set_settings(page, {"temperature": "Home", "max_new_tokens": 11})
    send(page, "What changed?")
    wait_done(page, 2)
    shot(page, "compare")
    texts = [replies(page).nth(i).inner_text() for i in range(replies(page).count())]
    assert len(texts) == 2
    assert texts[0].startswith("chat") and texts[1].startswith("compare")
    assert all(len(t.split("\n", 1)[-1].strip()) > 0 for t in texts)


def test_load_and_generation_failures_are_shown_and_the_app_keeps_running(browser, servers):
    srv = servers["failing"]
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        open_app(page, srv.url)
        assert page.locator(f"{ASSISTANT} >> text=is a classifier").count() >= 1
        send(page, "Hello?")
        page.wait_for_selector(f"{ASSISTANT} >> text=No chat model is loaded")
        switch_profile(page, "Compare")
        send(page, "Hello?")
        page.wait_for_selector(f"{ASSISTANT} >> text=Generation with")
        shot(page, "failures-compare")
        switch_profile(page, "Classification")
        send(page, "Hello?")
        page.wait_for_selector(f"{ASSISTANT} >> text=Cannot classify")
        shot(page, "failures-classification")
        assert "no-such-model" in page.locator(ASSISTANT).last.inner_text()
        assert srv.process.poll() is None  # still running
        log = srv.output()
        assert "is a classifier" in log and "no-such-model" in log and "generation with" in log
    finally:
        context.close()

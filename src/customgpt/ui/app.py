"""The Chainlit app: profiles, the settings panel, streamed replies, stop, classification.

Start it with ``customgpt ui --chat MODEL ...`` (which writes the app's Chainlit config in a
temporary folder), or with ``chainlit run`` on this file, the models named by environment
variables (see :mod:`customgpt.ui.config`)::

    CUSTOMGPT_UI_CHAT=runs/alpaca/final chainlit run src/customgpt/ui/app.py --headless

The models load once, when Chainlit imports this file; a model that cannot be loaded is
reported in the log and on the page, and the rest of the app keeps working.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import chainlit as cl
from chainlit.input_widget import NumberInput, Slider, Switch

from customgpt.generate import ChatSession
from customgpt.ui.config import (
    APP_FOLDER_ENV,
    PROFILE_CHAT,
    PROFILE_CLASSIFY,
    PROFILE_COMPARE,
    AppConfig,
    profile_help,
    remove_app_folder,
)
from customgpt.ui.engine import (
    RAW_SETTING_ID,
    SEED_SETTING,
    AppState,
    Generation,
    LoadedModel,
    chat_settings,
    classification_markdown,
    classify_lines,
    sampling_params,
)

log = logging.getLogger("customgpt.ui")

CONFIG = AppConfig.from_env()
STATE = AppState.load(CONFIG)
if not CONFIG.chat and not CONFIG.classifier:
    STATE.error = ("no model given: start the app with `customgpt ui --chat MODEL`, or set "
                   "CUSTOMGPT_UI_CHAT (and/or CUSTOMGPT_UI_CLASSIFIER) before `chainlit run`")
    log.error(STATE.error)

DESCRIPTIONS = {
    PROFILE_CHAT: "Chat with the language model; replies stream in as they are generated.",
    PROFILE_COMPARE: "Both chat models answer every message, with the same settings and seed.",
    PROFILE_CLASSIFY: "Label each line of your message, with every class's probability.",
}


@cl.on_app_shutdown
def shutdown() -> None:
    """Remove the app folder ``customgpt ui`` made (Chainlit exits without returning to it)."""
    remove_app_folder(os.environ.get(APP_FOLDER_ENV))


@cl.set_chat_profiles
async def chat_profiles(user: Any = None, language: Any = None) -> list[cl.ChatProfile]:
    return [
        cl.ChatProfile(name=name, markdown_description=DESCRIPTIONS[name], default=(i == 0))
        for i, name in enumerate(CONFIG.profiles)
    ]


def _profile() -> str:
    profile = cl.user_session.get("chat_profile")
    return profile if profile in CONFIG.profiles else (CONFIG.profiles[0] if CONFIG.profiles else "")


def _chat_models(profile: str) -> list[LoadedModel]:
    if profile == PROFILE_COMPARE:
        return [m for m in (STATE.chat, STATE.compare) if m is not None]
    if profile == PROFILE_CHAT and STATE.chat is not None:
        return [STATE.chat]
    return []


def _welcome(profile: str) -> str:
    lines = [f"## customgpt · {profile or 'no model'}", ""]
    if profile:
        lines += [DESCRIPTIONS[profile], ""]
    lines += ["**Profiles** (switch at the top of the page):", *profile_help(CONFIG), "",
              "**Models loaded:**", *STATE.summary()]
    if STATE.error and not CONFIG.profiles:
        lines += ["", f"**Error:** {STATE.error}"]
    return "\n".join(lines)


@cl.on_chat_start
async def start() -> None:
    profile = _profile()
    await cl.Message(content=_welcome(profile), author="customgpt").send()
    models = _chat_models(profile)
    failed = [m for m in (*models, STATE.classifier if profile == PROFILE_CLASSIFY else None) if m and not m.ok]
    for m in failed:
        await cl.ErrorMessage(content=f"The {m.role} model `{m.spec}` could not be loaded: {m.error}",
                              author="customgpt").send()
    ready = [m for m in models if m.ok]
    if ready:
        context = min(m.context_length for m in ready)
        widgets: list[Any] = [
            Slider(id=s.id, label=s.label, initial=s.initial, min=s.min, max=s.max, step=s.step,
                   description=s.description)
            for s in chat_settings(context)
        ]
        widgets.append(NumberInput(id=SEED_SETTING.id, label=SEED_SETTING.label, initial=SEED_SETTING.initial,
                                   description=SEED_SETTING.description))
        widgets.append(Switch(id=RAW_SETTING_ID, label="Show replies as raw text", initial=False,
                              description="show the model's text exactly, without Markdown formatting"))
        await cl.ChatSettings(widgets).send()
        sessions = [ChatSession(m.model, STATE.tokenizer, m.style) for m in ready]
        cl.user_session.set("conversations", sessions)
    cl.user_session.set("generations", [])


@cl.on_settings_update
async def settings_updated(settings: dict[str, Any]) -> None:
    log.info("settings: %s", settings)


@cl.on_chat_end
async def end() -> None:
    """The page was closed or a new chat started: a reply still running is stopped, not waited
    for. (The stop button needs no handler: Chainlit cancels the task, and :func:`_stream`
    stops the reply.)"""
    for gen in cl.user_session.get("generations") or []:
        gen.stop()


@cl.on_message
async def on_message(message: cl.Message) -> None:
    profile = _profile()
    if profile == PROFILE_CLASSIFY:
        await _classify(message.content)
    elif profile in (PROFILE_CHAT, PROFILE_COMPARE):
        await _chat(profile, message.content)
    else:
        await cl.ErrorMessage(content=STATE.error or "no model is loaded", author="customgpt").send()


async def _classify(text: str) -> None:
    loaded = STATE.classifier
    if loaded is None or not loaded.ok:
        reason = loaded.error if loaded is not None else "no classifier was given (--classifier MODEL)"
        await cl.ErrorMessage(content=f"Cannot classify: {reason}", author="customgpt").send()
        return
    if not text.strip():
        await cl.Message(content="Nothing to classify: type one text per line.", author="customgpt").send()
        return
    try:
        lines, probs = await cl.make_async(classify_lines)(loaded, STATE.tokenizer, text)
    except Exception as exc:  # noqa: BLE001 - shown on the page and logged; the app keeps running
        log.exception("classification failed")
        await cl.ErrorMessage(content=f"Classification failed: {exc}", author="customgpt").send()
        return
    await cl.Message(content=classification_markdown(lines, probs, loaded.info["labels"]),
                     author=f"classifier {loaded.spec}").send()


async def _chat(profile: str, text: str) -> None:
    models = [m for m in _chat_models(profile) if m.ok]
    conversations: list[ChatSession] = cl.user_session.get("conversations") or []
    if not models or len(conversations) != len(models):
        failed = [f"`{m.spec}`: {m.error}" for m in _chat_models(profile) if not m.ok]
        await cl.ErrorMessage(content="No chat model is loaded. " + "; ".join(failed), author="customgpt").send()
        return
    settings = cl.user_session.get("chat_settings") or {}
    context = min(m.context_length for m in models)
    params = sampling_params(settings, context)  # each session adds its own style's stop strings
    raw = bool(settings.get(RAW_SETTING_ID, False))
    log.info("reply with %s (seed %d)", ", ".join(m.spec for m in models), params.seed)

    async def notice(text: str) -> None:
        await cl.Message(content=f"*{text}*", author="customgpt").send()

    gens = [Generation(conv, text, params, m.lock, on_notice=notice) for conv, m in zip(conversations, models)]
    cl.user_session.set("generations", gens)
    compare = len(models) > 1
    await asyncio.gather(*(_stream(gen, m, raw, compare) for gen, m in zip(gens, models)))


async def _stream(gen: Generation, loaded: LoadedModel, raw: bool, labelled: bool) -> None:
    header = ""
    if labelled:  # which model answers, and the seed both used (to reproduce the pair)
        seed = gen.params.seed
        header = (f"[{loaded.role}: {loaded.spec}, seed {seed}]\n" if raw
                  else f"**{loaded.role}** · `{loaded.spec}` · seed {seed}\n\n")
    msg = cl.Message(content="", author=f"{loaded.role} {loaded.spec}", language="text" if raw else None)
    if header:
        await msg.stream_token(header)
    try:
        async for piece in gen:
            await msg.stream_token(piece)
    except asyncio.CancelledError:  # the stop button: the worker stops at its next token
        gen.stop()
        stopped = time.perf_counter()
        await gen.wait(timeout=5.0)
        log.info("%s: stopped; the worker ended %.3f s after the stop", msg.author, time.perf_counter() - stopped)
        await _finish(msg, gen, header, "stopped")
        raise
    except Exception as exc:  # noqa: BLE001 - shown on the page and logged; the app keeps running
        log.exception("generation with %s failed", loaded.spec)
        await _finish(msg, gen, header, "failed")
        await cl.ErrorMessage(content=f"Generation with `{loaded.spec}` failed: {exc}", author="customgpt").send()
        return
    await _finish(msg, gen, header, None)


async def _finish(msg: cl.Message, gen: Generation, header: str, why: str | None) -> None:
    if msg.content == header:
        msg.content = header + ("(stopped before the first token)" if why == "stopped" else
                                "(no reply: the model ended it at once)" if why is None else "(no reply)")
    await msg.send()
    result = gen.result
    if result is not None:
        log.info("%s: %d tokens, %.1f tokens/s, first piece after %.3f s, finish %s",
                 msg.author, result.completion_tokens, result.tokens_per_second,
                 gen.time_to_first_piece or 0.0, why or result.finish_reason)

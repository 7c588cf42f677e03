"""A web app for chatting with, comparing and classifying with customgpt models (Chainlit).

    customgpt ui --chat runs/alpaca/final --compare runs/dpo/final --classifier runs/sms/best

Profiles (picked at the top of the page):

* **Chat**: a multi-turn chat with the ``--chat`` model, its prompts built by a prompt style
  (:mod:`customgpt.prompts`); the reply streams in token by token; a settings panel sets
  temperature, top-k, top-p, repetition penalty, max new tokens and the seed; the stop button
  ends a reply at once.
* **Compare** (with ``--compare``): every message answered by both chat models, with the same
  settings and seed, each reply in its own message.
* **Classification** (with ``--classifier``): each line of a message classified, with every
  class's probability.

Modules: :mod:`customgpt.ui.config` (settings from the command line or the environment, and
the generated Chainlit app folder), :mod:`customgpt.ui.engine` (loading, the conversation,
generation in a worker thread, the classification table; no Chainlit), and
:mod:`customgpt.ui.app` (the Chainlit callbacks; ``chainlit run`` takes this file). Needs the
``ui`` extra (``pip install customgpt[ui]``).
"""

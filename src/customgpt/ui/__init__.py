"""A web app for chatting with, comparing and classifying with customgpt models (Chainlit;
the profiles are described in docs/ui.md).

    customgpt ui --chat runs/alpaca/final --compare runs/dpo/final --classifier runs/sms/best

Modules: :mod:`customgpt.ui.config` (settings from the command line or the environment, and
the generated Chainlit app folder), :mod:`customgpt.ui.engine` (loading, the conversation,
generation in a worker thread, the classification table; no Chainlit), and
:mod:`customgpt.ui.app` (the Chainlit callbacks; ``chainlit run`` takes this file). Needs the
``ui`` extra (``pip install customgpt[ui]``).
"""

"""``customgpt ui``: the web app (Chainlit) for chatting, comparing two models and classifying.

    customgpt ui --chat runs/alpaca/final
    customgpt ui --chat runs/alpaca/final --compare runs/dpo/final --classifier runs/sms/best
    customgpt ui --chat gpt2 --prompt-style plain --host 0.0.0.0 --port 8080

Then open http://HOST:PORT in a browser. The app's Chainlit folder (its ``config.toml`` and
readme) is a temporary folder, removed when the server stops. Needs the ``ui`` extra.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile

from customgpt.cli._common import add_device_argument
from customgpt.cli.serve import listen
from customgpt.errors import ConfigError
from customgpt.prompts import PROMPT_STYLES


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chat", metavar="MODEL", default=None,
                        help="the chat model: preset, checkpoint or Hugging Face folder, weights file or hub id")
    parser.add_argument("--compare", metavar="MODEL", default=None,
                        help="a second chat model answering every message beside the first (the Compare profile)")
    parser.add_argument("--classifier", metavar="MODEL", default=None,
                        help="a classifier folder (from `customgpt finetune classify`) for the Classification profile")
    parser.add_argument("--prompt-style", choices=PROMPT_STYLES, default=None,
                        help="the chat template the chat models were fine-tuned with (default: the one each "
                             "model's folder records, else alpaca)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    from customgpt.ui.config import (
        APP_FILE,
        APP_FOLDER_ENV,
        APP_FOLDER_PREFIX,
        AppConfig,
        remove_app_folder,
        write_app_folder,
    )

    config = AppConfig(chat=args.chat, compare=args.compare, classifier=args.classifier,
                       prompt_style=args.prompt_style, device=args.device).check()
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    listen(args.host, args.port).close()  # fail now, in one line, if the address is taken (not after loading)
    # Only look for Chainlit here: importing it reads (and writes) its app folder.
    if importlib.util.find_spec("chainlit") is None:
        raise ConfigError("the web app needs Chainlit: pip install -e '.[ui]' from the repository root (the ui extra)")
    folder = tempfile.mkdtemp(prefix=APP_FOLDER_PREFIX)
    try:
        write_app_folder(folder, config)
        # Chainlit reads its folder and our app its models from the environment, when imported.
        # Chainlit ends the process with os._exit at shutdown, so the app removes the folder then.
        os.environ.update(config.to_env())
        os.environ["CHAINLIT_APP_ROOT"] = os.environ[APP_FOLDER_ENV] = folder
        print(f"customgpt ui: loading the models, then serving on http://{args.host}:{args.port} (Ctrl-C stops)",
              file=sys.stderr, flush=True)
        from chainlit.cli import cli

        try:
            cli.main(["run", str(APP_FILE), "--headless", "--host", args.host, "--port", str(args.port)],
                     prog_name="chainlit", standalone_mode=False)
        except KeyboardInterrupt:
            pass
    finally:
        remove_app_folder(folder)
    return 0

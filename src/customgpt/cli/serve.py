"""``customgpt serve``: an OpenAI-compatible HTTP server with batched decoding.

    customgpt serve --model runs/sms/final
    customgpt serve --model gpt2 --port 8000 --max-batch 16 --api-key "$KEY"
    customgpt serve --model ft/ --prompt-style alpaca --classifier runs/spam/final

Routes: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /v1/classify
(with --classifier), /health, and the API docs at /docs. The server listens on loopback
(127.0.0.1) unless --host says otherwise. Needs the ``serve`` extra (FastAPI, uvicorn).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from customgpt.cli._common import add_model_arguments
from customgpt.errors import CustomGPTError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (port 0: a free one), or a one-line error. Clients
    that connect before the server starts wait in the socket's backlog."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen()
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise CustomGPTError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                             "(choose another --port or --host)") from None
    return sock


def build_parser(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--model-name", default=None,
                        help="the id clients send as 'model' (default: MODEL as given)")
    parser.add_argument("--classifier", default=None, metavar="FOLDER",
                        help="a classifier folder (customgpt finetune classify) to serve at /v1/classify")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, loopback)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("CUSTOMGPT_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1 routes "
                             "(default: $CUSTOMGPT_API_KEY, else no key)")
    parser.add_argument("--max-batch", type=int, default=16,
                        help="requests decoded together in one batch (default: %(default)s; 1 = one at a time)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests that may wait for a batch row; more are answered 429 (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=512,
                        help="the most tokens one request may generate (default: %(default)s)")
    parser.add_argument("--prompt-style", default=None,
                        help="prompt style that renders chat messages: alpaca, phi3 or plain "
                             "(default: the one the model folder records, else plain)")
    parser.add_argument("--crop-prompt", action="store_true",
                        help="crop prompts longer than the context window from the left instead of answering 400")
    parser.add_argument("--embedding-pooling", choices=("mean", "last"), default="mean",
                        help="how /v1/embeddings pools the final hidden states (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice; 1 is often faster on a busy machine)")
    parser.add_argument("--seed", type=int, default=0, help="seeds a preset's random weights (default: %(default)s)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from customgpt.serve import ServerConfig, create_app
    except ImportError as exc:
        raise CustomGPTError(f"customgpt serve needs the 'serve' extra ({exc.name} is missing): "
                             "pip install -e '.[serve]' from the repository root (the serve extra)") from None
    from customgpt.cli.generate import load_for_generation
    from customgpt.prompts import style_for_model

    if not 0 <= args.port <= 65535:
        raise CustomGPTError(f"--port must be in 0..65535, got {args.port}")
    config = ServerConfig(
        model_name=args.model_name or args.model,
        max_tokens=args.max_tokens,
        prompt_style=style_for_model(args.prompt_style, args.model, "plain"),
        api_key=args.api_key,
        crop_prompt=args.crop_prompt,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        embedding_pooling=args.embedding_pooling,
    )
    if args.threads is not None and args.threads < 1:
        raise CustomGPTError(f"--threads must be >= 1, got {args.threads}")
    sock = listen(args.host, args.port)  # before the model loads: a taken port fails at once
    with sock:
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        model, tokenizer = load_for_generation(args)  # warns when the weights are a preset's random ones
        classifier = classifier_info = None
        if args.classifier is not None:
            from customgpt.classifier import load_classifier

            classifier, classifier_info = load_classifier(args.classifier, device=model.device)
            classifier_info = {**classifier_info, "name": classifier_info.get("name") or Path(args.classifier).name}
        app = create_app(model, tokenizer, config, classifier=classifier, classifier_info=classifier_info)
        if args.host not in LOOPBACK and config.api_key is None:
            print(f"warning: listening on {args.host} without --api-key: anyone who can reach this address "
                  "can use the model", file=sys.stderr)
        port = sock.getsockname()[1]
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"serving {config.model_name!r} on http://{host}:{port}/v1 (API docs: http://{host}:{port}/docs); "
              f"batch {config.max_batch}, queue {config.max_queue}", file=sys.stderr, flush=True)
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=port, log_level=args.log_level))
        server.run(sockets=[sock])
    return 0

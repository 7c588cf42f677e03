"""``customgpt eval``: responses, perplexity, ROUGE-L / exact match and an LLM judge.

    customgpt eval responses --model runs/instruct-small/final --data instruction-data --split test --out r.json
    customgpt eval perplexity --model runs/instruct-small/final --split test
    customgpt eval perplexity --model gpt2 --text story.txt
    customgpt eval rouge --responses r.json                 # per-record scores in r.rouge.json
    customgpt eval judge --responses r.json --url http://localhost:11434/v1 --model llama3
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from customgpt.cli._common import add_device_argument
from customgpt.errors import CustomGPTError


def _add_model_and_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, help="a model folder, weights file, preset or hub id")
    p.add_argument("--prompt-style", help="alpaca, phi3 or plain (default: the style the model was trained "
                   "with, else alpaca)")
    add_device_argument(p)
    p.add_argument("--data", default="instruction-data",
                   help="a JSON list / JSONL file of records, or a registered dataset (default: %(default)s)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                   help="which records: a part of the split, or all of them (default: %(default)s)")
    p.add_argument("--split-method", default="order", choices=("order", "random"),
                   help="order: the reference split in file order (85%% train, 10%% test, the rest val); "
                   "random: the same sizes after a seeded shuffle (default: %(default)s)")
    p.add_argument("--seed", type=int, default=123, help="seed of the random split (default: %(default)s)")
    p.add_argument("--fields", default="instruction,input,output",
                   help="the record keys of instruction, input and output (default: %(default)s)")
    p.add_argument("--data-dir", help="registry mirror folder (default: $CUSTOMGPT_DATA_DIR)")


def _add_output_arguments(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", "-o", help=f"where to write {what}")
    p.add_argument("--force", action="store_true", help="replace an existing output file")


def build_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")

    p = sub.add_parser("responses", help="greedy responses to instruction records, as JSON with model_response",
                       description="Greedy responses to instruction records, written as the records plus "
                       "model_response (the reference recipe's format).")
    _add_model_and_data_arguments(p)
    _add_output_arguments(p, "the responses (default: responses-SPLIT.json)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="the most tokens per response (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="records answered at once (default: %(default)s)")
    p.add_argument("--limit", type=int, help="only the first N records of the split")
    p.add_argument("--no-stop-strings", action="store_true",
                   help="stop at end-of-text only, not at the prompt style's stop strings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("perplexity", help="perplexity on response tokens (or on a plain text file)",
                       description="Perplexity exp(mean token loss) on the response tokens of instruction "
                       "records, or on the whole of a plain text file (--text).")
    _add_model_and_data_arguments(p)
    p.add_argument("--text", help="a UTF-8 text file ('-': standard input): perplexity over all its tokens instead of records")
    p.add_argument("--max-length", type=int, help="tokens per example or window (default: the model's context)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per batch (default: %(default)s)")

    p = sub.add_parser("rouge", help="ROUGE-L F1 and exact match of responses against references",
                       description="ROUGE-L F1 (rouge-score, no stemming) and exact match of each response "
                       "against its reference, as percentages; per-record scores written beside the file.")
    p.add_argument("--responses", "-r", required=True, help="a responses file (JSON list of records)")
    p.add_argument("--response-key", default="model_response",
                   help="the record field holding the response (default: %(default)s)")
    p.add_argument("--reference-key", default="output",
                   help="the record field holding the reference answer (default: %(default)s)")
    _add_output_arguments(p, "the per-record scores (default: RESPONSES.rouge.json)")

    p = sub.add_parser("judge", help="scores 0-100 from an LLM judge behind an OpenAI-compatible endpoint",
                       description="Ask a judge model (Ollama's /v1, llama.cpp, vLLM, customgpt serve ...) to "
                       "score each response 0-100 against the reference, with the reference recipe's prompt, "
                       "temperature 0 and a fixed seed.")
    p.add_argument("--responses", "-r", required=True, help="a responses file (JSON list of records)")
    p.add_argument("--url", required=True, help="the API base, e.g. http://localhost:11434/v1")
    p.add_argument("--model", "-m", required=True, help="the judge model's name on that server")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                   help="bearer token (default: $OPENAI_API_KEY, if set)")
    p.add_argument("--response-key", default="model_response",
                   help="the record field holding the response (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per answer (default: %(default)s)")
    p.add_argument("--retries", type=int, default=3, help="retries of a transient failure (default: %(default)s)")
    p.add_argument("--seed", type=int, default=123, help="sent with each request (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_output_arguments(p, "the per-record scores (default: RESPONSES.judge.json)")


def run(args: argparse.Namespace) -> int:
    return {"responses": _responses, "perplexity": _perplexity, "rouge": _rouge, "judge": _judge}[args.what](args)


# --------------------------------------------------------------------------- shared


def _records(args: argparse.Namespace):
    from customgpt.data.instruct import read_instruction_file, resolve_source, split_records

    keys = [k.strip() for k in args.fields.split(",")]
    if len(keys) != 3 or not all(keys) or len(set(keys)) != 3:
        raise CustomGPTError(f"--fields needs three different keys (instruction,input,output), got {args.fields!r}")
    records = read_instruction_file(resolve_source(args.data, args.data_dir), keys)
    if args.split != "all":
        records = split_records(records, method=args.split_method, seed=args.seed).get(args.split)
    if not records:
        raise CustomGPTError(f"the {args.split} split of {args.data} has no records")
    return records


def _model_and_style(args: argparse.Namespace):
    from customgpt.checkpoints import load_model
    from customgpt.device import resolve_device
    from customgpt.prompts import style_for_model

    model = load_model(args.model, device=resolve_device(args.device))
    return model.eval(), style_for_model(args.prompt_style, args.model, "alpaca")


def _check_at_least(low: int, **values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < low:
            raise CustomGPTError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


# --------------------------------------------------------------------------- commands


def _responses(args: argparse.Namespace) -> int:
    from customgpt.evaluate.responses import generate_responses, with_responses, write_json
    from customgpt.tokenizer import get_tokenizer

    _check_at_least(1, batch_size=args.batch_size, limit=args.limit)
    _check_at_least(0, max_new_tokens=args.max_new_tokens)
    out = Path(args.out or f"responses-{args.split}.json")
    if out.exists() and not args.force:  # before any work
        raise CustomGPTError(f"{out} exists; pass --force to replace it, or choose another --out")
    records = _records(args)[: args.limit]
    model, style = _model_and_style(args)
    responses, settings = generate_responses(model, get_tokenizer(), style, records,
                                             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                             use_stop_strings=not args.no_stop_strings,
                                             progress=not args.no_progress)
    settings = {**settings, "model": str(args.model), "data": str(args.data), "split": args.split}
    write_json(out, with_responses(records, responses, settings), force=args.force, inputs=[args.data])
    print(f"wrote {len(responses)} responses to {out}")
    return 0


def _perplexity(args: argparse.Namespace) -> int:
    from customgpt.data.instruct import InstructionDataset
    from customgpt.evaluate.perplexity import response_perplexity, text_perplexity
    from customgpt.tokenizer import get_tokenizer

    _check_at_least(1, batch_size=args.batch_size, max_length=args.max_length)
    model, style = _model_and_style(args)
    context = model.config.context_length
    if args.max_length and args.max_length > context:
        raise CustomGPTError(f"--max-length {args.max_length} exceeds the model's context length ({context})")
    tokenizer = get_tokenizer()
    if args.text:
        from customgpt.io import read_text_strict

        ids = tokenizer.encode(read_text_strict(args.text), allowed_special="none")  # "-": standard input
        if len(ids) < 2:
            raise CustomGPTError(f"{args.text}: fewer than 2 tokens, nothing to score")
        result = text_perplexity(model, ids, context_length=args.max_length, batch_size=args.batch_size)
        what = f"tokens of {args.text}"
    else:
        records = _records(args)
        dataset = InstructionDataset(records, tokenizer, style, args.max_length or context)
        result = response_perplexity(model, dataset, batch_size=args.batch_size)
        what = f"response tokens of {len(records)} records ({args.split}, prompt style {style.name})"
        if dataset.n_truncated:
            what += f"; {dataset.n_truncated} truncated to {dataset.max_length} tokens"
    print(f"perplexity {result.perplexity:.3f} (loss {result.loss:.4f} nats/token) on {result.tokens} {what}")
    return 0


def _rouge(args: argparse.Namespace) -> int:
    from customgpt.evaluate.overlap import score_responses
    from customgpt.evaluate.responses import read_responses, write_json

    out = Path(args.out) if args.out else Path(args.responses).with_suffix(".rouge.json")
    records = read_responses(args.responses, (args.reference_key, args.response_key))
    rows, summary = score_responses(records, response_key=args.response_key, reference_key=args.reference_key)
    write_json(out, {"summary": summary, "records": rows}, force=args.force, inputs=[args.responses])
    print(f"ROUGE-L {summary['rouge_l']:.1f}, exact match {summary['exact_match']:.1f}% "
          f"({summary['count']} records); per-record scores in {out}")
    return 0


def _judge(args: argparse.Namespace) -> int:
    from customgpt.evaluate.judge import JudgeClient, judge_responses
    from customgpt.evaluate.responses import read_responses, write_json

    out = Path(args.out) if args.out else Path(args.responses).with_suffix(".judge.json")
    if out.exists() and not args.force:  # before asking the judge anything
        raise CustomGPTError(f"{out} exists; pass --force to replace it, or choose another --out")
    records = read_responses(args.responses, ("instruction", "output", args.response_key))
    with JudgeClient(args.url, args.model, api_key=args.api_key, timeout=args.timeout, max_retries=args.retries,
                     seed=args.seed) as client:
        report = judge_responses(records, client, response_key=args.response_key, progress=not args.no_progress)
    write_json(out, {"judge": {"url": client.url, "model": args.model, "seed": args.seed, "temperature": 0.0},
                     "summary": report.summary(), "records": report.records}, force=args.force,
               inputs=[args.responses])
    left_out = f" ({len(report.unparseable)} unparseable answers left out)" if report.unparseable else ""
    mean = f"mean score {report.mean:.2f} over {report.scored}" if report.scored else "no score in the answers"
    print(f"judge {args.model}: {mean} of {len(records)} records{left_out}; per-record scores in {out}")
    return 0

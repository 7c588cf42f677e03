"""``customgpt eval``: rouge, judge, perplexity and responses from the command line."""

from __future__ import annotations

import json
import re

import pytest
from evaluate.test_judge import Judge
from helpers import tiny_model
from rouge_score import rouge_scorer

from customgpt.checkpoints import save_model
from customgpt.cli import main
from customgpt.data.instruct import InstructionDataset, read_instruction_file
from customgpt.evaluate.perplexity import response_perplexity, text_perplexity
from customgpt.prompts import get_prompt_style
from customgpt.tokenizer import get_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = [
    {"instruction": "Say hi.", "input": "", "output": "Hello there.", "model_response": "Hello there."},
    {"instruction": "Name a fruit.", "input": "", "output": "An apple.", "model_response": "A red apple, sweet."},
    {"instruction": "Translate.", "input": "Hund", "output": "Dog", "model_response": ""},
]


@pytest.fixture
def responses(tmp_path):
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(ROWS))
    return path


def test_rouge_prints_percentages_and_writes_per_record_scores(responses, capsys):
    assert main(["eval", "rouge", "--responses", str(responses)]) == 0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    want = [scorer.score(r["output"], r["model_response"])["rougeL"].fmeasure for r in ROWS]
    out = capsys.readouterr().out
    beside = responses.with_name("responses.rouge.json")
    assert out == (f"ROUGE-L {100 * sum(want) / 3:.1f}, exact match 33.3% (3 records); "
                   f"per-record scores in {beside}\n")
    saved = json.loads(beside.read_text())
    assert [r["rouge_l"] for r in saved["records"]] == want
    assert [r["exact_match"] for r in saved["records"]] == [True, False, False]
    # the scores file is not replaced without --force; the responses file is never an output
    assert main(["eval", "rouge", "--responses", str(responses)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["eval", "rouge", "--responses", str(responses), "--out", str(responses), "--force"]) == 2
    assert "is an input of this command" in capsys.readouterr().err


def test_rouge_names_malformed_records(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([ROWS[0], {"output": "x"}, "text"]))
    assert main(["eval", "rouge", "--responses", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {path}: 2 malformed record(s): record 1: missing 'model_response' (keys: 'output'); "
                   "record 2: expected an object, got str\n")
    assert "Traceback" not in err


def test_judge_over_loopback(responses, capsys):
    server = Judge([("answer", "95"), ("status", 500), ("answer", "sixty")])
    try:
        code = main(["eval", "judge", "--responses", str(responses), "--url", server.url, "--model", "judge-8b",
                     "--no-progress"])
    finally:
        server.close()
    assert code == 0
    captured = capsys.readouterr()
    beside = responses.with_name("responses.judge.json")
    assert captured.out.endswith(f"judge judge-8b: mean score 47.50 over 2 of 3 records (1 unparseable answers "
                                 f"left out); per-record scores in {beside}\n")
    assert "record 1: the judge's answer is not a score" in captured.out + captured.err
    saved = json.loads(beside.read_text())
    assert [r["score"] for r in saved["records"]] == [95, None, 0]
    assert saved["summary"] == {"mean": 47.5, "scored": 2, "total": 3, "unparseable": [1]}
    assert saved["judge"]["model"] == "judge-8b" and saved["judge"]["temperature"] == 0.0
    assert len(server.requests) == 3  # record 0, record 1 (a 500, then its retry); the empty response is 0 unasked


def test_judge_with_no_score_in_its_answers_says_so(responses, capsys):
    responses.write_text(json.dumps(ROWS[:2]))  # no empty response: every record is asked
    server = Judge([("answer", "sixty")] * 2)
    try:
        code = main(["eval", "judge", "--responses", str(responses), "--url", server.url, "--model", "judge-8b",
                     "--no-progress"])
    finally:
        server.close()
    assert code == 0
    beside = responses.with_name("responses.judge.json")
    assert capsys.readouterr().out.endswith(f"judge judge-8b: no score in the answers of 2 records (2 unparseable "
                                            f"answers left out); per-record scores in {beside}\n")


def test_judge_unreachable_is_one_line(responses, capsys):
    server = Judge([])
    url = server.url
    server.close()
    assert main(["eval", "judge", "--responses", str(responses), "--url", url, "--model", "m", "--retries", "0",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no answer after 1 tries" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    save_model(tiny_model(3, vocab_size=50257, context_length=64), folder)
    return folder


def _number(text, name):
    return float(re.search(rf"{name} ([0-9.]+)", text).group(1))


def test_perplexity_on_response_tokens_and_on_text(model_dir, shared_datasets, tmp_path, capsys):
    from customgpt.checkpoints import load_model

    assert main(["eval", "perplexity", "--model", str(model_dir), "--split", "val", "--device", "cpu",
                 "--data-dir", str(shared_datasets)]) == 0
    out = capsys.readouterr().out
    records = read_instruction_file(shared_datasets / "instruction-data.json")[1045:]
    model = load_model(model_dir)
    want = response_perplexity(model, InstructionDataset(records, get_tokenizer(), get_prompt_style("alpaca"), 64))
    assert _number(out, "perplexity") == pytest.approx(want.perplexity, abs=1e-3)
    assert f"on {want.tokens} response tokens of 55 records (val, prompt style alpaca)" in out
    text = tmp_path / "t.txt"
    text.write_text("Every effort moves you. " * 20)
    assert main(["eval", "perplexity", "--model", str(model_dir), "--text", str(text), "--device", "cpu"]) == 0
    ids = get_tokenizer().encode(text.read_text())
    assert _number(capsys.readouterr().out, "perplexity") == pytest.approx(text_perplexity(model, ids).perplexity,
                                                                          abs=1e-3)
    text.write_bytes(b"caf\xe9")
    assert main(["eval", "perplexity", "--model", str(model_dir), "--text", str(text)]) == 2
    assert "t.txt: not UTF-8 text (byte 3, 0xe9)" in capsys.readouterr().err


def test_responses_for_a_split_of_the_registry_dataset(model_dir, shared_datasets, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["eval", "responses", "--model", str(model_dir), "--split", "test", "--limit", "3",
                 "--data-dir", str(shared_datasets),
                 "--max-new-tokens", "5", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 3 and all(isinstance(r["model_response"], str) for r in rows)
    assert rows[0]["generation"]["split"] == "test" and rows[0]["generation"]["stop_strings"] == list(
        get_prompt_style("alpaca").stop_strings)
    assert main(["eval", "responses", "--model", str(model_dir), "--limit", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err


def test_perplexity_of_text_on_standard_input(model_dir, monkeypatch, capsys):
    import io
    import sys

    from customgpt.checkpoints import load_model

    text = "Every effort moves you. " * 5
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    assert main(["eval", "perplexity", "--model", str(model_dir), "--text", "-", "--device", "cpu"]) == 0
    want = text_perplexity(load_model(model_dir), get_tokenizer().encode(text)).perplexity
    assert _number(capsys.readouterr().out, "perplexity") == pytest.approx(want, abs=1e-3)

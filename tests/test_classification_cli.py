"""End to end: ``customgpt finetune classify`` on the spam data with a tiny model, the files it
writes, ``customgpt classify`` on the result, and bad data stopped before any training."""

from __future__ import annotations

import csv
import json

import pytest

from customgpt.cli import main

TINY = """
model:
  preset: cpu-tiny
  n_embd: 32
  n_head: 2
  dropout: 0.0
data:
  dataset: sms-spam
  max_length: 48
  bucket_by_length: true
classifier:
  pooling: mean
  trainable: all
  lm_loss_weight: 0.5       # the auxiliary next-token loss
train:
  epochs: 2
  batch_size: 32
  lr: 3.0e-3
  warmup_fraction: 0.1
optim:
  weight_decay: 0.0
runtime:
  device: cpu
logging:
  progress: false
"""


@pytest.fixture(scope="module")
def spam_run(tmp_path_factory, shared_datasets):
    root = tmp_path_factory.mktemp("spam")
    config = root / "tiny.yaml"
    config.write_text(TINY)
    out = root / "run"
    code = main(["finetune", "classify", "--config", str(config), "--data.data_dir", str(shared_datasets),
                 "--logging.out_dir", str(out), "--lm_pretrain.steps", "5", "--lm_pretrain.context_length", "32"])
    assert code == 0
    return out


def test_run_writes_metrics_predictions_plots_and_model(spam_run):
    metrics = json.loads((spam_run / "metrics.json").read_text())
    assert metrics["sizes"] == {"train": 1045, "val": 149, "test": 300}
    assert metrics["labels"] == ["ham", "spam"]
    assert metrics["max_length"] == 48 and metrics["truncated"]["train"] > 0  # long messages were cut
    assert len(metrics["epochs"]) == 2 and 1 <= metrics["best_epoch"] <= 2
    test = metrics["test"]
    assert test["n"] == 300 and sum(map(sum, test["confusion_matrix"])) == 300
    assert test["accuracy"] > 0.8, test  # chance is 0.5 on the balanced test set
    assert set(test["per_class"]) == {"ham", "spam"} and 0 < test["macro_f1"] <= 1
    assert metrics["val"]["n"] == 149
    with open(spam_run / "test_predictions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 300 and set(rows[0]) == {"text", "label", "predicted", "probability"}
    assert all(0.5 <= float(r["probability"]) <= 1.0 for r in rows)
    correct = sum(r["label"] == r["predicted"] for r in rows)
    assert correct == round(test["accuracy"] * 300)
    for name in ("loss.png", "accuracy.png"):
        assert (spam_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (spam_run / "metrics.jsonl").read_text().splitlines()]
    assert any("lm_loss" in r for r in records) and any("val_accuracy" in r for r in records)
    assert all(e["train_lm_loss"] > 0 for e in metrics["epochs"])  # the auxiliary loss, logged apart
    assert (spam_run / "config.yaml").is_file()
    assert (spam_run / "best" / "classifier.json").is_file()


def test_classify_cli_prints_label_and_probability(spam_run, capsys, tmp_path):
    assert main(["classify", "--model", str(spam_run / "best"),
                 "WINNER!! Claim your FREE prize now, call 09061701461", "ok see you at home later"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line in lines:
        label, prob, _ = line.split("\t", 2)
        assert label in ("ham", "spam") and 0.5 <= float(prob) <= 1.0
    messages = tmp_path / "m.txt"
    messages.write_text("first message\n\nsecond message\n", encoding="utf-8")
    assert main(["classify", "-m", str(spam_run / "best"), "--file", str(messages)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[2] for line in out] == ["first message", "second message"]
    assert main(["classify", "-m", str(spam_run / "best")]) == 2
    assert "nothing to classify" in capsys.readouterr().err


def _tiny_run(tmp_path, shared_datasets, *overrides: str):
    """``customgpt finetune classify`` on the TINY config for one epoch: (exit code, config, run folder)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "run"
    code = main(["finetune", "classify", "--config", str(config), "--data.data_dir", str(shared_datasets),
                 "--logging.out_dir", str(out), "--train.epochs", "1", *overrides])
    return code, config, out


def test_ensemble_run_trains_each_member_and_saves_their_average(tmp_path, shared_datasets, capsys):
    code, config, out = _tiny_run(tmp_path, shared_datasets, "--classifier.ensemble", "2", "--train.max_steps", "6",
                                  "--train.seed", "5")
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "ensemble member 2/2 (seed 6)" in printed and "an ensemble of 2, best epochs 1/1" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["seed"] for m in metrics["ensemble"]] == [5, 6]
    assert all(len(m["epochs"]) == 1 for m in metrics["ensemble"])
    info = json.loads((out / "best" / "classifier.json").read_text())
    assert info["members"] == ["member-0", "member-1"] and info["seeds"] == [5, 6]
    assert not (out / "members").exists()  # the members' checkpoints live in best/ only
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r.get("member") for r in records if "val_accuracy" in r} == {0, 1}
    assert metrics["test"]["n"] == 300
    assert main(["classify", "--model", str(out / "best"), "Claim your FREE prize now"]) == 0
    label, prob, _ = capsys.readouterr().out.strip().split("\t", 2)
    assert label in ("ham", "spam") and 0.5 <= float(prob) <= 1.0
    assert main(["finetune", "classify", "--config", str(config), "--classifier.ensemble", "0",
                 "--logging.out_dir", str(tmp_path / "bad")]) == 2
    assert "classifier.ensemble" in capsys.readouterr().err


def test_char_ngram_member_joins_the_vote_and_is_scored_on_its_own(tmp_path, shared_datasets, capsys):
    code, config, out = _tiny_run(tmp_path, shared_datasets, "--train.max_steps", "4",
                                  "--classifier.char_ngram_weight", "0.4", "--classifier.char_ngram_range", "2,4")
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "char n-gram classifier: " in printed and "of 2-4 characters from 1,045 training texts" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    ngram = metrics["char_ngram"]
    assert ngram["weight"] == 0.4 and ngram["ngram_range"] == [2, 4] and ngram["vocabulary"] > 10_000
    parts = ngram["components"]
    assert set(parts) == {"gpt_members", "char_ngram"} and set(parts["char_ngram"]) == {"val", "test"}
    assert parts["char_ngram"]["test"] > 0.9  # the n-gram model alone is strong on spam
    info = json.loads((out / "best" / "classifier.json").read_text())
    assert info["members"] == ["member-0", "member-1"] and info["weights"] == pytest.approx([0.6, 0.4])
    member = json.loads((out / "best" / "member-1" / "classifier.json").read_text())
    assert member["kind"] == "char_ngram" and member["labels"] == ["ham", "spam"]
    # the saved ensemble's test predictions are what the CLI gives for the same texts
    with open(out / "test_predictions.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if "\n" not in r["text"]][:3]
    assert main(["classify", "--model", str(out / "best"), *[r["text"] for r in rows]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [r["predicted"] for r in rows]
    for bad in ("1.0", "-0.1"):
        assert main(["finetune", "classify", "--config", str(config), "--classifier.char_ngram_weight", bad,
                     "--logging.out_dir", str(tmp_path / "bad")]) == 2
        assert "classifier.char_ngram_weight" in capsys.readouterr().err


def test_existing_run_folder_is_refused(spam_run, capsys, shared_datasets):
    code = main(["finetune", "classify", "--config", "spam-small", "--data.data_dir", str(shared_datasets),
                 "--logging.out_dir", str(spam_run)])
    assert code == 2 and "already holds a classification run" in capsys.readouterr().err


BAD_FILES = {
    "empty.csv": (b"", "empty.csv: the file is empty"),
    "nocol.csv": (b"message,label\nhello,a\n", "nocol.csv: line 1 (header): missing column(s) 'text'"),
    "unknown.csv": (b"text,label\nhello,a\nbye,b\nwhat,zzz\n", "unknown.csv: 1 bad row(s): line 4: unknown label 'zzz'"),
    "bytes.csv": (b"text,label\nhello,a\nbad \xfe,b\n", "bytes.csv: 1 bad row(s): line 3: invalid UTF-8 byte 0xfe"),
    "emptytext.jsonl": (b'{"text": "hi", "label": "a"}\n{"text": "  ", "label": "b"}\n',
                        "emptytext.jsonl: 1 bad row(s): line 2: empty text"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_data_stops_before_training(name, tmp_path, capsys):
    data, expected = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(data)
    out = tmp_path / "run"
    code = main(["finetune", "classify", "--config", "spam-small", "--data.dataset", "none",
                 "--data.train_file", str(path), "--data.labels", "a,b", "--logging.out_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert expected in err and str(tmp_path) in err
    assert not out.exists()  # nothing was created: no run folder, no checkpoint


def test_own_csv_with_three_classes(tmp_path, capsys):
    rows = [("good movie great fun", "pos"), ("terrible boring film", "neg"), ("it was a film", "neu")] * 12
    train = tmp_path / "train.csv"
    with open(train, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "sentiment"])
        writer.writerows(rows)
    out = tmp_path / "run"
    code = main(["finetune", "classify", "--config", "spam-small", "--data.dataset", "none",
                 "--data.train_file", str(train), "--data.test_file", str(train), "--data.text_column", "review",
                 "--data.label_column", "sentiment", "--model.preset", "cpu-tiny", "--model.n_embd", "16",
                 "--train.epochs", "2", "--train.batch_size", "8", "--classifier.ema_decay", "0.5",
                 "--classifier.balanced_class_weights", "true", "--logging.out_dir", str(out),
                 "--logging.progress", "false", "--logging.plots", "false"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == ["neg", "neu", "pos"]
    assert metrics["sizes"] == {"train": 33, "val": 3, "test": 36}
    assert len(metrics["test"]["confusion_matrix"]) == 3
    info = json.loads((out / "best" / "classifier.json").read_text())
    assert info["labels"] == ["neg", "neu", "pos"]


def test_print_config(capsys):
    assert main(["finetune", "classify", "--config", "spam-124m", "--print-config", "--train.lr", "1e-4"]) == 0
    out = capsys.readouterr().out
    assert "init: openai-community/gpt2" in out and "lr: 0.0001" in out and "trainable: last_blocks" in out
    assert main(["finetune", "classify", "--print-config", "--classifier.pooling", "median"]) == 2
    assert "classifier.pooling" in capsys.readouterr().err


def test_spam_124m_preset_from_a_hugging_face_folder(tmp_path, shared_datasets):
    """The original project's recipe (pretrained weights, last block + final LayerNorm + head
    trainable) on a tiny random Hugging Face GPT-2 folder standing in for the 124M weights."""
    from helpers import tiny_hf_model

    hf = tiny_hf_model(seed=3, vocab_size=50257)  # context 32, width 48, 2 blocks
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "run"
    code = main(["finetune", "classify", "--config", "spam-124m", "--model.init", str(tmp_path / "hf"),
                 "--data.data_dir", str(shared_datasets), "--train.max_steps", "3", "--logging.out_dir", str(out),
                 "--logging.progress", "false", "--logging.plots", "false"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["max_length"] == 32  # the longest training message (120 tokens), capped at the context
    assert metrics["truncated"]["train"] > 0
    block = 4 * 48 + (48 * 3 * 48 + 3 * 48) + (48 * 48 + 48) + (48 * 192 + 192) + (192 * 48 + 48)
    assert metrics["parameters"]["trainable"] == block + 2 * 48 + (48 * 2 + 2)  # last block, ln_f, head
    assert metrics["parameters"]["trainable_mode"] == "last_blocks"
    assert len(metrics["epochs"]) == 1 and metrics["epochs"][0]["step"] == 3


@pytest.fixture
def restore_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _ensemble_run(tmp_path, shared_datasets, capture, name: str, *extra: str) -> tuple[int, str]:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    code = main(["finetune", "classify", "--config", str(config), "--data.data_dir", str(shared_datasets),
                 "--logging.out_dir", str(tmp_path / name), "--classifier.ensemble", "3", "--train.max_steps", "5",
                 "--train.seed", "5", "--train.epochs", "1", "--model.dropout", "0.1", *extra])
    captured = capture.readouterr()
    return code, captured.out + captured.err


def test_members_trained_side_by_side_match_the_sequential_loop(tmp_path, shared_datasets, capfd, restore_threads):
    """Two worker processes of one thread each compute exactly what the sequential loop computes
    with one thread: the same members (to the bit), histories, records and predictions (capfd:
    the workers print to the inherited file descriptors)."""
    import torch
    from safetensors.torch import load_file

    code, printed = _ensemble_run(tmp_path, shared_datasets, capfd, "seq", "--runtime.threads", "1")
    assert code == 0, printed
    code, printed = _ensemble_run(tmp_path, shared_datasets, capfd, "par", "--runtime.threads", "2",
                                  "--classifier.parallel_members", "2")
    assert code == 0, printed
    assert "2 members at a time, each in its own process with 1 torch thread (seeds 5-7)" in printed
    assert "member 2, epoch 1:" in printed
    seq, par = tmp_path / "seq", tmp_path / "par"
    for m in range(3):
        for name in ("model.safetensors", "classifier.safetensors"):
            a, b = (load_file(d / "best" / f"member-{m}" / name) for d in (seq, par))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"member {m}: {name} differs"
    ms, mp = (json.loads((d / "metrics.json").read_text()) for d in (seq, par))
    untimed = lambda history: [{k: v for k, v in e.items() if k != "elapsed"} for e in history]  # noqa: E731
    assert [untimed(e["epochs"]) for e in ms["ensemble"]] == [untimed(e["epochs"]) for e in mp["ensemble"]]
    assert mp["parallel_members"] == {"processes": 2, "threads_each": 1} and "parallel_members" not in ms
    records = [[{k: v for k, v in json.loads(line).items() if k != "elapsed"}
                for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (seq, par)]
    assert records[0] == records[1] and {r.get("member") for r in records[1]} == {0, 1, 2}
    rows = [list(csv.DictReader((d / "test_predictions.csv").open(encoding="utf-8"))) for d in (seq, par)]
    assert [r["predicted"] for r in rows[0]] == [r["predicted"] for r in rows[1]]
    assert all(abs(float(a["probability"]) - float(b["probability"])) < 1e-5 for a, b in zip(*rows))
    assert not (par / "members").exists()


def test_an_error_in_a_worker_process_reaches_the_user(tmp_path, shared_datasets, capfd, restore_threads):
    code, printed = _ensemble_run(tmp_path, shared_datasets, capfd, "bad", "--classifier.parallel_members", "2",
                                  "--classifier.class_weights", "1.0,2.0,3.0")
    assert code == 2
    assert "classifier.class_weights has 3 values for 2 classes" in printed


def test_parallel_members_must_be_positive(tmp_path, shared_datasets, capsys):
    code, printed = _ensemble_run(tmp_path, shared_datasets, capsys, "zero", "--classifier.parallel_members", "0")
    assert code == 2 and "parallel_members" in printed and "must be >= 1" in printed


def test_a_worker_process_that_dies_is_reported_with_what_to_do(tmp_path, shared_datasets, capfd, monkeypatch,
                                                                restore_threads):
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor

    def submit(self, fn, *args, **kwargs):  # as when the system kills a worker (out of memory)
        future = Future()
        future.set_exception(BrokenProcessPool("A process in the process pool was terminated abruptly"))
        return future

    monkeypatch.setattr(ProcessPoolExecutor, "submit", submit)
    code, printed = _ensemble_run(tmp_path, shared_datasets, capfd, "killed", "--classifier.parallel_members", "2")
    assert code == 2
    assert "a worker process training ensemble members died" in printed
    assert "set classifier.parallel_members to 1" in printed

"""The classification loop: exact gradient accumulation of every loss option, and end to end
``customgpt finetune classify`` on the spam data with a tiny model (the files it writes, bad
data stopped before any training)."""

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
                 "--logging.out_dir", str(out)])
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


@pytest.mark.parametrize("options, expected", [
    (["--classifier.class_weights", "nan,1.0"], "classifier.class_weights: must be a finite number"),
    (["--classifier.class_weights", "0,1.0"], "classifier.class_weights: must all be > 0, got [0.0, 1.0]"),
    (["--classifier.loss", "focal", "--classifier.label_smoothing", "0.1"],
     "classifier.label_smoothing: applies to loss: cross_entropy only"),
    (["--classifier.ema_decay", "1"], "classifier.ema_decay: must be in [0, 1), got 1.0"),
    (["--data.val_fraction", "1"], "data.val_fraction: must be in [0, 1), got 1.0 (set in --data.val_fraction)"),
    (["--data.text_column", "label"], "data.text_column: equals data.label_column ('label'); the texts and the "
     "labels must be two different columns (set in --data.text_column)"),
])
def test_classifier_section_errors_name_the_key(options, expected, capsys):
    assert main(["finetune", "classify", "--print-config", *options]) == 2
    assert expected in capsys.readouterr().err


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


# --------------------------------------------------------------------------- 17.1: exact accumulation

WEIGHTINGS = {  # classifier options → (loss module, auxiliary LM weight)
    "plain": ({}, 0.0),
    "class_weights": ({"class_weights": [1.0, 6.0]}, 0.0),
    "balanced": ({"balanced_class_weights": True}, 0.0),
    "focal": ({"loss": "focal", "focal_gamma": 2.0, "class_weights": [1.0, 6.0]}, 0.0),
    "label_smoothing": ({"label_smoothing": 0.1, "class_weights": [2.0, 1.0]}, 0.0),
    "lm_loss": ({"class_weights": [1.0, 6.0]}, 0.5),
}


def _tiny_classifier():
    import torch

    from customgpt.classifier import GPTClassifier
    from customgpt.config import GPTConfig
    from customgpt.model import GPT

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=50, context_length=16, n_embd=16, n_layer=2, n_head=2))
    return GPTClassifier(gpt, 2, pooling="last").double()


def _batch_of_12():
    import torch

    from customgpt.data.classification import collate_classification

    g = torch.Generator().manual_seed(1)
    rows = [(torch.randint(0, 50, (int(n),), generator=g).tolist(), int(i % 4 == 0))  # 9 of class 0, 3 of class 1
            for i, n in enumerate(torch.randint(2, 12, (12,), generator=g))]
    return collate_classification(rows, pad_id=7)


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_gradients_do_not_depend_on_the_micro_batch_size(name):
    import torch

    from customgpt.train.classify import ClassifierSection, accumulate_gradients, build_loss

    options, lm_weight = WEIGHTINGS[name]
    batch = _batch_of_12()
    loss_fn = build_loss(ClassifierSection(**options, lm_loss_weight=lm_weight), ["ham", "spam"], [36, 12])
    grads, losses = {}, {}
    for micro in (1, 3, 12):
        model = _tiny_classifier()
        stats = accumulate_gradients(model, batch, loss_fn.double(), micro, lm_loss_weight=lm_weight)
        grads[micro] = torch.cat([p.grad.flatten() for p in model.parameters()])
        losses[micro] = stats["loss"] + lm_weight * stats["lm_loss"]
    assert grads[12].abs().max() > 1e-3  # something was learnt
    for micro in (1, 3):
        assert (grads[micro] - grads[12]).abs().max() <= 1e-6, (name, micro)
        assert losses[micro] == pytest.approx(losses[12], abs=1e-9)


def test_accumulated_loss_is_the_whole_batch_mean_by_hand():
    import torch
    import torch.nn.functional as F

    from customgpt.train.classify import ClassifierSection, accumulate_gradients, build_loss

    batch = _batch_of_12()
    model = _tiny_classifier()
    loss_fn = build_loss(ClassifierSection(class_weights=[1.0, 6.0]), ["ham", "spam"], [36, 12]).double()
    stats = accumulate_gradients(model, batch, loss_fn, 3, lm_loss_weight=0.5)
    w = torch.tensor([1.0, 6.0], dtype=torch.float64)[batch["labels"]]
    ce, lm = [], []
    with torch.no_grad():
        for ids, mask, label in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
            real = ids[: int(mask.sum())][None]  # the row alone, without padding
            ce.append(F.cross_entropy(model(real), label[None], reduction="sum"))
            lm += [F.cross_entropy(model.gpt(real)[0, :-1], real[0, 1:], reduction="none")]
    assert stats["loss"] == pytest.approx(float((torch.stack(ce) * w).sum() / w.sum()), rel=1e-9)
    assert stats["lm_loss"] == pytest.approx(float(torch.cat(lm).mean()), rel=1e-9)  # mean over all real targets


def _weighted_csv(tmp_path):
    rows = [(f"message number {i} " + ("win a prize now" if i % 4 == 0 else "see you later"),
             "spam" if i % 4 == 0 else "ham") for i in range(48)]
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("text", "label"), *rows])
    return path


@pytest.mark.parametrize("options", [
    ["--classifier.class_weights", "1.0,6.0"],  # the run
    ["--classifier.balanced_class_weights", "true", "--classifier.lm_loss_weight", "0.5"],
])
def test_step_one_gradient_norm_does_not_depend_on_micro_batch_size(tmp_path, capsys, options):
    path = _weighted_csv(tmp_path)
    norms = {}
    for micro in ("12", "3"):
        out = tmp_path / f"run-{micro}"
        code = main(["finetune", "classify", "--config", "spam-small", "--data.dataset", "none",
                     "--data.train_file", str(path), "--data.val_file", str(path), "--model.preset", "cpu-tiny",
                     "--model.n_embd", "16", "--model.n_head", "2", "--model.dropout", "0", "--train.batch_size", "12",
                     "--train.micro_batch_size", micro, "--train.max_steps", "1", "--train.epochs", "1",
                     "--classifier.ema_decay", "0", *options, "--logging.out_dir", str(out),
                     "--logging.progress", "false", "--logging.plots", "false"])
        assert code == 0, capsys.readouterr().err
        first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert first["step"] == 1
        norms[micro] = first["grad_norm"]
    assert norms["3"] == pytest.approx(norms["12"], rel=1e-5)

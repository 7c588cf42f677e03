"""Instruction fine-tuning end to end: a tiny model memorises 20 records through
``customgpt finetune instruct``, then ``customgpt eval responses`` reproduces a trained answer
greedily and stops at end-of-text."""

from __future__ import annotations

import json

import pytest
import yaml

from customgpt.cli import main
from customgpt.data.instruct import InstructDataConfig
from customgpt.errors import ConfigError
from customgpt.train.config import ModelSection, TrainConfig
from customgpt.train.instruct import InstructConfig, InstructSection, finetune_instruct
from customgpt.train.logging import read_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FACTS = [
    ("Name the colour of the sky.", "", "Blue."),
    ("What do bees make?", "", "Honey."),
    ("Translate to French.", "cat", "chat"),
    ("Translate to French.", "dog", "chien"),
    ("What is the opposite of hot?", "", "Cold."),
    ("Add the numbers.", "2 and 3", "5"),
    ("Add the numbers.", "4 and 4", "8"),
    ("Name a large ocean.", "", "The Pacific."),
    ("Which planet is red?", "", "Mars."),
    ("Spell the word backwards.", "stop", "pots"),
    ("What is frozen water?", "", "Ice."),
    ("Give a synonym.", "happy", "glad"),
    ("Give a synonym.", "quick", "fast"),
    ("What gas do plants take in?", "", "Carbon dioxide."),
    ("Name the first month.", "", "January."),
    ("How many legs does a spider have?", "", "Eight."),
    ("Capitalise the word.", "paris", "Paris"),
    ("What is the plural?", "mouse", "mice"),
    ("Who wrote Hamlet?", "", "Shakespeare."),
    ("What is the capital of Italy?", "", "Rome."),
]


def _write_records(path):
    path.write_text(json.dumps([{"instruction": i, "input": x, "output": o} for i, x, o in FACTS], indent=1))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny GPT fine-tuned on the 20 records through the CLI (80 steps of 20 records)."""
    root = tmp_path_factory.mktemp("instruct")
    records = _write_records(root / "facts.json")
    config = {
        "model": {"preset": "cpu-tiny", "context_length": 64, "dropout": 0.0},
        "data": {"dataset": None, "train_file": str(records), "val_file": str(records), "mask_instructions": True},
        "instruct": {"sample_max_new_tokens": 4, "responses_split": "val", "max_new_tokens": 30},
        "train": {"epochs": 80, "batch_size": 20, "lr": 5.0e-3, "schedule": "constant", "eval_every": 40,
                  "eval_iters": 1, "seed": 0},
        "runtime": {"device": "cpu"},
        "logging": {"out_dir": str(root / "run"), "progress": False, "plots": False},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    assert main(["finetune", "instruct", "--config", str(root / "tiny.yaml")]) == 0
    return root


def test_the_run_answers_and_scores_a_split(trained):
    metrics = json.loads((trained / "run" / "val_metrics.json").read_text())
    rows = json.loads((trained / "run" / "val_responses.json").read_text())
    assert metrics["records"] == len(rows) == 20 and metrics["split"] == "val"
    exact = sum(r["model_response"] == r["output"] for r in rows)
    assert metrics["exact_match"] == pytest.approx(100 * exact / 20) and exact >= 18
    assert metrics["perplexity"] < 1.1 and metrics["rouge_l"] > 90
    assert [r["index"] for r in metrics["per_record"]] == list(range(20))


def test_training_drives_the_loss_near_zero(trained):
    records = read_metrics(trained / "run")
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 80 and losses[0] > 8.0  # ln(50257) = 10.8 at the start
    assert losses[-1] < 0.1
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 40, 80] and evals[-1]["val_ppl"] < 1.1
    assert sum("sample" in r for r in records) == 80  # a greedy response after every epoch
    assert (trained / "run" / "best" / "model.safetensors").is_file()
    meta = json.loads((trained / "run" / "final" / "metadata.json").read_text())
    assert meta["prompt_style"] == {"name": "alpaca"} and meta["kind"] == "instruction-tuned"


def test_eval_responses_reproduces_trained_answers_and_stops_at_end_of_text(trained, capsys):
    out = trained / "responses.json"
    code = main(["eval", "responses", "--model", str(trained / "run" / "final"), "--data", str(trained / "facts.json"),
                 "--split", "all", "--out", str(out), "--max-new-tokens", "30", "--no-stop-strings",
                 "--no-progress", "--device", "cpu"])
    assert code == 0 and f"wrote 20 responses to {out}" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [r["instruction"] for r in rows] == [f[0] for f in FACTS]
    # Stopping at end-of-text is what ends these short answers: without it greedy decoding
    # would run on for 30 tokens (stop strings are off).
    exact = [r["model_response"] == r["output"] for r in rows]
    assert sum(exact) >= 18, [(r["output"], r["model_response"]) for r in rows]
    assert rows[0]["generation"]["decoding"] == "greedy" and rows[0]["generation"]["stop_strings"] == []
    assert rows[0]["generation"]["max_new_tokens"] == 30 and rows[0]["generation"]["prompt_style"] == "alpaca"
    # an existing output is not replaced without --force
    assert main(["eval", "responses", "--model", str(trained / "run" / "final"), "--data",
                 str(trained / "facts.json"), "--split", "all", "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err


def test_a_run_folder_is_not_reused(trained):
    cfg = InstructConfig(
        model=ModelSection(preset="cpu-tiny"),
        data=InstructDataConfig(dataset=None, train_file=str(trained / "facts.json"),
                                val_file=str(trained / "facts.json")),
        train=TrainConfig(max_steps=1, batch_size=4),
        instruct=InstructSection(responses_split="none"),
    )
    cfg.logging.out_dir = str(trained / "run")
    with pytest.raises(ConfigError, match="already holds a run"):
        finetune_instruct(cfg)


def test_bad_records_stop_the_run_before_training(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x", "output": "y"}, {"instruction": "", "output": "z"}]))
    cfg = InstructConfig(data=InstructDataConfig(dataset=None, train_file=str(bad), val_file=str(bad)))
    cfg.logging.out_dir = str(tmp_path / "run")
    with pytest.raises(Exception, match=r"bad.json: 1 malformed record\(s\): record 1: empty 'instruction'"):
        finetune_instruct(cfg)
    assert not (tmp_path / "run").exists()


def test_lora_trains_the_adapters_only_and_saves_merged_models(tmp_path):
    import torch

    from customgpt.checkpoints import load_model
    from customgpt.lora import LoRAConfig

    records = _write_records(tmp_path / "facts.json")
    cfg = InstructConfig(
        model=ModelSection(preset="cpu-tiny", context_length=64),
        data=InstructDataConfig(dataset=None, train_file=str(records), val_file=str(records)),
        instruct=InstructSection(trainable="lora", responses_split="none", sample_max_new_tokens=0),
        lora=LoRAConfig(r=4, alpha=8.0, targets=["c_attn", "c_fc"]),
        train=TrainConfig(max_steps=3, batch_size=10, lr=1e-2, schedule="constant", eval_every=0, seed=1),
    )
    cfg.logging.out_dir, cfg.logging.progress, cfg.logging.plots = str(tmp_path / "run"), False, False
    torch.manual_seed(1)
    summary = finetune_instruct(cfg)
    assert summary["steps"] == 3
    final = load_model(tmp_path / "run" / "final")  # a plain GPT: the adapters are merged in
    torch.manual_seed(1)
    start = cfg.model.build()
    changed = {k for k, v in final.state_dict().items() if not torch.equal(v, start.state_dict()[k])}
    assert changed and all(k.endswith(("attn.c_attn.weight", "mlp.c_fc.weight")) for k in changed), changed

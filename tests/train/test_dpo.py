"""Preference tuning: the three reference modes agree, DPO through the CLI raises the reward
margin and accuracy, a too-high learning rate trips the collapse guard, the degeneration
measures by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from helpers import tiny_model

from customgpt.checkpoints import load_model, save_model
from customgpt.cli import main
from customgpt.data.preference import (
    PreferenceDataConfig,
    PreferenceDataset,
    collate_preference,
    prepare_preference_splits,
)
from customgpt.errors import ConfigError
from customgpt.lora import LoRAConfig, inject_lora, mark_only_lora_trainable
from customgpt.losses import DPOLoss
from customgpt.prompts import get_prompt_style
from customgpt.tokenizer import get_tokenizer
from customgpt.train.config import RuntimeConfig, load_config
from customgpt.train.dpo import (
    METRIC_NAMES,
    DPOConfig,
    Reference,
    collapsed,
    degeneration,
    finetune_dpo,
    pair_loss,
    precompute_reference_logps,
)
from customgpt.train.runtime import setup_runtime

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: A tiny GPT-2-vocabulary model whose greedy text is varied (random weights, std 0.3): the
#: collapse guard has a healthy start to compare with.
TINY = dict(seed=0, std=0.3, vocab_size=50257, n_embd=32, n_head=2, context_length=128)


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    save_model(tiny_model(**TINY), folder)
    return folder


def _write_config(path, init, data_dir, **train):
    cfg = {
        "model": {"preset": None, "init": str(init), "dropout": 0.0},
        "data": {"data_dir": str(data_dir), "limit": 40, "max_length": 96},  # 34 / 2 / 4 pairs
        "train": {"batch_size": 4, "lr": 3e-3, "epochs": 3, "eval_every": 9, "eval_iters": 2,
                  "collapse_prompts": 2, "collapse_max_new_tokens": 12, "response_max_new_tokens": 8, **train},
        "runtime": {"device": "cpu", "threads": 1},
        "logging": {"out_dir": str(path.parent / "run"), "progress": False},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dpo_through_the_cli_raises_margin_and_accuracy(tmp_path, tiny_init, shared_datasets, capsys):
    config = _write_config(tmp_path / "dpo.yaml", tiny_init, shared_datasets)
    assert main(["finetune", "dpo", "--config", str(config)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "metrics.json").read_text())
    before, after = summary["before"], summary["after"]
    assert before["rewards/margins"] == 0.0 and before["loss"] == pytest.approx(math.log(2))  # policy == reference
    assert after["rewards/margins"] > 0.5 and after["rewards/accuracies"] > 0.5  # 27 steps of 4 pairs
    assert after["eval_rewards/margins"] > 0  # and it generalises a little to the 2 validation pairs
    assert summary["steps"] == 27 and not summary["collapse_warnings"]
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 9, 18, 27]
    for name in METRIC_NAMES:  # TRL's names: the training part unprefixed, validation with eval_
        assert name in evals[-1] and f"eval_{name}" in evals[-1]
    assert len(evals[-1]["probe/responses"]) == 2
    for png in ("loss.png", "margins.png", "accuracy.png"):
        assert (run / png).stat().st_size > 1000
    responses = json.loads((run / "test_responses.json").read_text())
    assert len(responses) == 4 and all("model_response" in r and r["output"] for r in responses)
    assert load_model(run / "model").config.n_embd == 32
    from customgpt.prompts import saved_prompt_style

    assert saved_prompt_style(run / "model").name == "alpaca"  # chat, the web app and the server read it
    assert "reward margin 0.000 -> " in capsys.readouterr().out


def test_too_high_learning_rate_trips_the_collapse_guard(tmp_path, tiny_init, shared_datasets):
    config = _write_config(tmp_path / "dpo.yaml", tiny_init, shared_datasets, lr=0.05, eval_every=3,
                           stop_on_collapse=True, test_responses=False)
    cfg = load_config(DPOConfig, config)
    cfg.logging.plots = False
    summary = finetune_dpo(cfg)
    assert summary["stopped"].startswith("collapse at step")
    before, after = summary["before"], summary["after"]
    assert summary["collapse_warnings"] and (after["probe/repeat4"] > before["probe/repeat4"] + 0.25
                                             or after["probe/distinct2"] < before["probe/distinct2"] - 0.25)
    assert summary["model_step"] == 0  # the last healthy weights: the start
    kept, start = load_model(tmp_path / "run" / "model"), tiny_model(**TINY)
    for name, tensor in start.state_dict().items():
        torch.testing.assert_close(kept.state_dict()[name], tensor, msg=name)


def _lora_policy():
    model = tiny_model(seed=1, std=0.1, vocab_size=50257, n_embd=32, n_head=2, context_length=128).train()
    inject_lora(model, LoRAConfig(r=4, alpha=8.0, targets=("c_attn", "c_fc")))
    mark_only_lora_trainable(model)
    return model


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_three_reference_modes_give_the_same_losses(shared_datasets, reduction):
    """A LoRA policy takes two AdamW steps against each kind of reference; the losses of both
    steps (the second after the adapters have moved) and the gradients of the first agree."""
    splits = prepare_preference_splits(PreferenceDataConfig(data_dir=str(shared_datasets), limit=40))
    data = PreferenceDataset(splits.train[:6], get_tokenizer(), get_prompt_style("alpaca"), 96)
    rt = setup_runtime(RuntimeConfig(device="cpu"), distributed=False)
    batch = collate_preference([data[i] for i in range(6)], max_length=96)
    results = {}
    for mode in ("copy", "adapters", "precomputed"):
        policy = _lora_policy()
        if mode == "precomputed":
            data.set_reference_logps(precompute_reference_logps(policy, data, reduction=reduction, batch_size=4,
                                                                rt=rt))
            batch.reference_logps = data.reference_logps[batch.indices]
        reference = Reference(mode, policy, reduction)
        loss_fn = DPOLoss(beta=0.1, reduction=reduction)
        optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
        losses, grads = [], None
        for _ in range(2):
            out, _, _ = pair_loss(policy, reference, loss_fn, batch, rt)
            loss = out.losses.mean()
            loss.backward()
            grads = grads or [p.grad.clone() for p in policy.parameters() if p.requires_grad]
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        results[mode] = (losses, grads)
    (l_copy, g_copy) = results["copy"]
    assert l_copy[0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at the start
    assert abs(l_copy[1] - math.log(2)) > 1e-3  # the second step sees a moved policy
    for mode in ("adapters", "precomputed"):
        losses, grads = results[mode]
        assert losses == pytest.approx(l_copy, abs=1e-6), mode
        for g, h in zip(grads, g_copy):
            torch.testing.assert_close(g, h, atol=1e-6, rtol=1e-5)


def test_degeneration_by_hand():
    # "a b c d a b c d": 4-grams abcd bcda cdab dabc abcd -> 5, 4 unique -> repeat4 1/5
    # bigrams ab bc cd da ab bc cd -> 7, 4 unique -> distinct2 4/7
    d = degeneration(["a b c d a b c d"])
    assert d["repeat4"] == pytest.approx(0.2) and d["distinct2"] == pytest.approx(4 / 7) and d["words"] == 8
    # pooled over responses: + "x y" (one bigram, no 4-gram) -> repeat4 1/5, distinct2 5/8
    d = degeneration(["a b c d a b c d", "X y"])
    assert d["repeat4"] == pytest.approx(0.2) and d["distinct2"] == pytest.approx(5 / 8) and d["words"] == 5
    assert degeneration([""]) == {"repeat4": 0.0, "distinct2": 0.0, "words": 0.0}
    start = {"repeat4": 0.1, "distinct2": 0.9}
    assert collapsed({"repeat4": 0.3, "distinct2": 0.8}, start, 0.25) is None
    assert "repeated 4-grams" in collapsed({"repeat4": 0.4, "distinct2": 0.8}, start, 0.25)
    assert "distinct-2" in collapsed({"repeat4": 0.1, "distinct2": 0.6}, start, 0.25)


def test_config_checks():
    with pytest.raises(ConfigError, match="adapters needs LoRA"):
        load_config(DPOConfig, None, ["--train.reference", "adapters"])
    with pytest.raises(ConfigError, match="label_smoothing"):
        load_config(DPOConfig, None, ["--train.loss", "ipo", "--train.label_smoothing", "0.1"])
    cfg = load_config(DPOConfig, "dpo-355m")
    assert (cfg.train.build_loss().beta, cfg.train.lr, cfg.optim.weight_decay, cfg.train.batch_size, cfg.train.epochs,
            cfg.train.reduction) == (0.1, 5e-6, 0.01, 8, 1, "mean")
    loss = load_config(DPOConfig, "dpo-small", ["--train.loss", "simpo"]).train.build_loss()
    assert (type(loss).__name__, loss.beta, loss.gamma) == ("SimPOLoss", 2.0, 1.0)


def test_lora_with_adapters_off_and_precomputed_reference_runs(tmp_path, tiny_init, shared_datasets, monkeypatch,
                                                              capsys):
    monkeypatch.setenv("CUSTOMGPT_CACHE_DIR", str(tmp_path / "cache"))
    quick = dict(max_steps=2, collapse_prompts=0, test_responses=False)

    def run(name, **train):
        config = _write_config(tmp_path / f"{name}.yaml", tiny_init, shared_datasets, **quick, **train)
        cfg = load_config(DPOConfig, config)
        cfg.logging.out_dir, cfg.logging.plots = str(tmp_path / name), False
        return finetune_dpo(cfg)

    lora = run("lora", trainable="lora", reference="adapters")
    assert lora["reference"] == "adapters" and lora["after"]["rewards/margins"] > 0
    merged, start = load_model(tmp_path / "lora" / "model").state_dict(), tiny_model(**TINY).state_dict()
    assert not torch.equal(merged["transformer.h.0.attn.c_attn.weight"], start["transformer.h.0.attn.c_attn.weight"])
    torch.testing.assert_close(merged["transformer.h.0.mlp.c_fc.weight"], start["transformer.h.0.mlp.c_fc.weight"])

    first = run("pre1", reference="precomputed")
    assert "computed into" in capsys.readouterr().out
    files = list((tmp_path / "cache" / "reference-logps").glob("*.safetensors"))
    assert len(files) == 1
    second = run("pre2", reference="precomputed")
    assert f"read from {files[0]}" in capsys.readouterr().out
    copy_ref = run("copy", reference="copy")
    for key in ("loss", "rewards/margins", "eval_loss"):
        assert first["after"][key] == pytest.approx(second["after"][key], abs=1e-7)
        assert first["after"][key] == pytest.approx(copy_ref["after"][key], abs=1e-5)

"""LoRA: exactness at init, merge/unmerge, trainability, adapter files, PEFT parity (the merge CLI: tests/cli/test_merge.py)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from lora_helpers import ALL_TARGETS, TINY, randomise_b, tiny_gpt, tokens  # noqa: E402
from torch import nn

from customgpt import checkpoints
from customgpt.errors import CheckpointError, ConfigError
from customgpt.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoRAConfig,
    LoRALinear,
    base_checksum,
    base_state_dict,
    count_parameters,
    disable_adapters,
    export_peft,
    import_peft,
    inject_lora,
    load_adapter,
    load_base_state_dict,
    lora_layers,
    lora_state_dict,
    mark_only_lora_trainable,
    merge_lora,
    merged_state_dict,
    parameter_summary,
    remove_lora,
    save_adapter,
    unmerge_lora,
)
from customgpt.model import GPT


class TinyClassifier(nn.Module):
    """A GPT body with a ``score`` head on the last position (as a classifier builds one)."""

    def __init__(self, seed: int = 0, n_classes: int = 3) -> None:
        super().__init__()
        self.gpt = tiny_gpt(seed)
        torch.manual_seed(seed + 100)
        self.score = nn.Linear(TINY.n_embd, n_classes, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.score(self.gpt.forward_hidden(idx)[:, -1, :])


def train_step(model: nn.Module, idx: torch.Tensor, lr: float = 1e-2) -> None:
    """One AdamW step on the LM loss over every parameter (frozen ones have no grad)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    logits = model(idx[:, :-1])
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(r=0), "lora.r"),
        (dict(r=2.5), "lora.r"),
        (dict(r=True), "lora.r"),
        (dict(alpha=0), "lora.alpha"),
        (dict(alpha=-1.0), "lora.alpha"),
        (dict(dropout=1.0), "lora.dropout"),
        (dict(dropout=-0.1), "lora.dropout"),
        (dict(targets=()), "lora.targets"),
        (dict(targets=("q_proj",)), "q_proj"),
        (dict(targets="c_attn"), "lora.targets"),
        (dict(targets=("c_fc", "c_fc")), "twice"),
        (dict(rslora="yes"), "lora.rslora"),
    ],
)
def test_config_rejects_bad_values(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        LoRAConfig(**kwargs)


def test_config_from_dict_and_scaling():
    cfg = LoRAConfig.from_dict({"r": 4, "alpha": 8, "dropout": 0.1, "targets": ["c_attn", "c_fc"]})
    assert cfg.targets == ("c_attn", "c_fc") and cfg.scaling == 2.0
    assert LoRAConfig.from_dict(cfg.to_dict()) == cfg
    assert LoRAConfig(r=16, alpha=8, rslora=True).scaling == pytest.approx(8 / math.sqrt(16))
    with pytest.raises(ConfigError, match="unknown key.*rank"):
        LoRAConfig.from_dict({"rank": 4})


# --------------------------------------------------------------------------- the layer


def test_layer_init_like_peft_and_forward_formula():
    torch.manual_seed(0)
    base = nn.Linear(40, 24)
    layer = LoRALinear(base, r=4, alpha=6.0)
    assert layer.lora_A.shape == (4, 40) and layer.lora_B.shape == (24, 4)
    assert torch.count_nonzero(layer.lora_B) == 0
    # kaiming_uniform_(a=sqrt(5)) on (r, in): U(-1/sqrt(in), 1/sqrt(in)), spread over the range
    bound = 1 / math.sqrt(40)
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.8 * bound
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 5, 40)
    expected = base(x) + (x @ layer.lora_A.T @ layer.lora_B.T) * (6.0 / 4)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)


def test_rslora_scaling_in_forward():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 8), r=9, alpha=6.0, rslora=True)
    assert layer.scaling == pytest.approx(2.0)  # 6 / sqrt(9), not 6 / 9
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 16)
    expected = layer.base_layer(x) + x @ layer.lora_A.T @ layer.lora_B.T * 2.0
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 8), r=4, alpha=4.0, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(6, 16)
    no_dropout = layer.base_layer(x) + x @ layer.lora_A.T @ layer.lora_B.T
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    torch.testing.assert_close(layer(x), no_dropout, rtol=0, atol=1e-6)
    layer.train()
    a, b = layer(x), layer(x)
    assert not torch.equal(a, b)
    assert (a - no_dropout).abs().max() > 1e-3
    # The base path never sees the dropout: with B = 0 training mode is exact too.
    with torch.no_grad():
        layer.lora_B.zero_()
    assert torch.equal(layer(x), layer.base_layer(x))


# --------------------------------------------------------------------------- injection


def test_zero_b_gives_base_logits_exactly():
    model = tiny_gpt()
    idx = tokens()
    with torch.no_grad():
        base = model(idx)
    names = inject_lora(model, LoRAConfig(r=4, alpha=8, targets=ALL_TARGETS))
    assert len(names) == 4 * TINY.n_layer
    assert "transformer.h.1.mlp.c_proj" in names and "transformer.h.0.attn.c_attn" in names
    assert isinstance(model.transformer.h[0].attn.c_attn, LoRALinear)
    with torch.no_grad():
        assert torch.equal(model(idx), base)


def test_target_suffixes_select_the_right_layers():
    model = tiny_gpt()
    names = inject_lora(model, LoRAConfig(targets=("attn.c_proj",)))
    assert names == ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]
    names = inject_lora(tiny_gpt(), LoRAConfig(targets=("c_proj",)))
    assert len(names) == 2 * TINY.n_layer
    with pytest.raises(ConfigError, match="already has LoRA"):
        inject_lora(model, LoRAConfig())
    with pytest.raises(ConfigError, match="'score' matches no linear"):
        inject_lora(tiny_gpt(), LoRAConfig(targets=("c_attn", "score")))


def test_tied_weight_is_refused():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.score = nn.Linear(4, 10, bias=False)
            self.score.weight = self.emb.weight

    with pytest.raises(ConfigError, match="shared with"):
        inject_lora(Tied(), LoRAConfig(targets=("score",)))


def test_count_parameters_and_summary():
    model = tiny_gpt()
    total = model.num_parameters()
    inject_lora(model, LoRAConfig(r=4, targets=("c_attn",)))
    mark_only_lora_trainable(model)
    lora_numel = TINY.n_layer * 4 * (TINY.n_embd + 3 * TINY.n_embd)
    assert count_parameters(model) == (lora_numel, total + lora_numel)
    share = 100 * lora_numel / (total + lora_numel)
    assert parameter_summary(model) == f"trainable {lora_numel:,} / {total + lora_numel:,} ({share:.2f}%)"


# --------------------------------------------------------------------------- training


def test_only_lora_and_requested_head_train_and_base_is_untouched():
    model = TinyClassifier()
    inject_lora(model, LoRAConfig(r=4, alpha=8, targets=ALL_TARGETS))
    assert mark_only_lora_trainable(model, extra_trainable=("score",)) == ["score"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora_names = {f"gpt.{k}" for k in lora_state_dict(model.gpt)}
    assert trainable == lora_names | {"score.weight"}
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # every parameter
    loss = nn.functional.cross_entropy(model(tokens()), torch.tensor([0, 2]))
    loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    opt.step()
    for name, p in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(p, frozen_before[name]), name
    assert all(torch.count_nonzero(layer.lora_B) > 0 for layer in lora_layers(model).values())

    with pytest.raises(ConfigError, match="'head' matches no module"):
        mark_only_lora_trainable(model, extra_trainable=("head",))
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        mark_only_lora_trainable(tiny_gpt())


def test_merge_unmerge_after_a_training_step():
    model = tiny_gpt()
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    inject_lora(model, LoRAConfig(r=4, alpha=8, targets=ALL_TARGETS))
    mark_only_lora_trainable(model)
    idx = tokens(length=16)
    train_step(model, idx)
    assert all(torch.count_nonzero(layer.lora_B) > 0 for layer in lora_layers(model).values())
    model.eval()
    with torch.no_grad():
        unmerged = model(idx)
        assert (unmerged - tiny_gpt()(idx)).abs().max() > 1e-4  # the step changed the model

        assert merge_lora(model) == 4 * TINY.n_layer
        merged = model(idx)
        assert (merged - unmerged).abs().max() <= 1e-5
        once = {k: v.clone() for k, v in model.state_dict().items()}
        merge_lora(model)  # merging twice changes nothing
        for k, v in model.state_dict().items():
            assert torch.equal(v, once[k]), k
        assert torch.equal(model(idx), merged)

        # merged_state_dict (from an unmerged model) equals the merged weights
        unmerge_lora(model)
        unmerge_lora(model)  # a second unmerge does nothing either
        for k, v in merged_state_dict(model).items():
            torch.testing.assert_close(v, once[k.replace(".c_attn.", ".c_attn.base_layer.").replace(
                ".c_proj.", ".c_proj.base_layer.").replace(".c_fc.", ".c_fc.base_layer.")], rtol=0, atol=1e-7)

        # unmerge subtracts the update again: base weights back within float rounding (no copy kept)
        worst = max((v - base_weights[k]).abs().max().item() for k, v in base_state_dict(model).items())
        assert worst <= 1e-6
        assert (model(idx) - unmerged).abs().max() <= 1e-5

        plain = remove_lora(model)
        assert not lora_layers(plain) and not hasattr(plain, "lora_config")
        assert set(plain.state_dict()) == set(base_weights)
        assert (plain(idx) - merged).abs().max() <= 1e-6


def test_disable_adapters_gives_base_logits_and_restores():
    model = tiny_gpt()
    idx = tokens()
    with torch.no_grad():
        base = model(idx)
        inject_lora(model, LoRAConfig(r=4, alpha=8, targets=ALL_TARGETS))
        randomise_b(model)
        adapted = model(idx)
        assert (adapted - base).abs().max() > 1e-3
        with disable_adapters(model) as ref:
            assert ref is model
            assert torch.equal(model(idx), base)
        assert torch.equal(model(idx), adapted)

        merge_lora(model)
        merged = model(idx)
        with disable_adapters(model):
            assert (model(idx) - base).abs().max() <= 1e-5
        assert all(layer.merged and not layer.disabled for layer in lora_layers(model).values())
        assert (model(idx) - merged).abs().max() <= 1e-6

        # an exception inside the block still restores the adapters
        with pytest.raises(RuntimeError, match="boom"), disable_adapters(model):
            raise RuntimeError("boom")
        assert all(not layer.disabled for layer in lora_layers(model).values())


def test_load_base_state_dict_into_injected_model():
    other = tiny_gpt(seed=5)
    model = tiny_gpt(seed=0)
    inject_lora(model, LoRAConfig(r=2, targets=("c_attn", "c_fc")))
    load_base_state_dict(model, other.state_dict())
    idx = tokens()
    with torch.no_grad():
        assert torch.equal(model(idx), other(idx))
    assert base_checksum(model) == base_checksum(other)
    with pytest.raises(CheckpointError, match="missing"):
        load_base_state_dict(model, {k: v for k, v in other.state_dict().items() if "c_fc" not in k})


def test_checksum_is_dtype_canonical_and_weight_sensitive():
    model = tiny_gpt()
    bf16 = tiny_gpt().to(torch.bfloat16)
    assert base_checksum(bf16) == base_checksum(bf16.float())
    assert base_checksum(model) == base_checksum(tiny_gpt())
    with torch.no_grad():
        model.transformer.h[1].ln_2.bias[0] += 1e-3
    assert base_checksum(model) != base_checksum(tiny_gpt())


# --------------------------------------------------------------------------- adapter files


def test_save_and_load_adapter_on_a_fresh_base(tmp_path):
    model = tiny_gpt()
    inject_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.1, targets=ALL_TARGETS, rslora=True))
    randomise_b(model)
    model.eval()
    idx = tokens()
    with torch.no_grad():
        expected = model(idx)
    save_adapter(model, tmp_path / "ad", base_model_info={"spec": "tiny", "name": "tiny base"})
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS])
    meta = json.loads((tmp_path / "ad" / ADAPTER_CONFIG).read_text())
    assert meta["base_model"]["sha256"] == base_checksum(tiny_gpt())
    assert meta["base_model"]["config"]["n_embd"] == TINY.n_embd and meta["base_model"]["name"] == "tiny base"
    assert meta["lora"]["rslora"] is True

    fresh = tiny_gpt()
    cfg = load_adapter(fresh, tmp_path / "ad")
    assert cfg == model.lora_config
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(idx), expected)


def test_adapter_on_the_wrong_base_is_refused(tmp_path):
    model = tiny_gpt()
    inject_lora(model, LoRAConfig(r=4, targets=ALL_TARGETS))
    randomise_b(model)
    save_adapter(model, tmp_path / "ad", base_model_info="tiny-seed0")

    wider = tiny_gpt(config=TINY.replace(n_embd=48))
    with pytest.raises(CheckpointError, match=r"shape mismatch for adapter tensor 'transformer\.h\.0\.attn\.c_attn\.lora_A'"):
        load_adapter(wider, tmp_path / "ad")
    deeper = tiny_gpt(config=TINY.replace(n_layer=3))
    with pytest.raises(CheckpointError, match=r"no tensor transformer\.h\.2\.attn\.c_attn\.lora_A"):
        load_adapter(deeper, tmp_path / "ad")

    other = tiny_gpt(seed=1)  # same shapes, other weights
    with pytest.raises(CheckpointError, match="checksum mismatch") as err:
        load_adapter(other, tmp_path / "ad")
    message = str(err.value)
    assert base_checksum(tiny_gpt()) in message and base_checksum(other) in message and "tiny-seed0" in message
    assert not lora_layers(other)  # refused before anything was injected
    load_adapter(other, tmp_path / "ad", verify_base=False)  # an explicit override still works
    assert lora_layers(other)


def test_adapter_with_a_saved_head(tmp_path):
    model = TinyClassifier()
    inject_lora(model, LoRAConfig(r=4, targets=("c_attn", "c_fc")))
    mark_only_lora_trainable(model, extra_trainable=("score",))
    nn.functional.cross_entropy(model(tokens()), torch.tensor([1, 2])).backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    save_adapter(model, tmp_path / "ad", "tiny", extra_trainable=("score",))
    meta = json.loads((tmp_path / "ad" / ADAPTER_CONFIG).read_text())
    assert meta["modules_to_save"] == ["score"]

    fresh = TinyClassifier(seed=0)
    with torch.no_grad():
        fresh.score.weight.normal_()  # another head init: it is overwritten, not checksummed
    load_adapter(fresh, tmp_path / "ad")
    idx = tokens()
    with torch.no_grad():
        assert torch.equal(fresh(idx), model(idx))


def test_unreadable_adapter_folders(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_adapter(tiny_gpt(), tmp_path / "nothing")
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(CheckpointError, match="use import_peft"):
        load_adapter(tiny_gpt(), tmp_path / "peft")
    model = tiny_gpt()
    inject_lora(model, LoRAConfig())
    with pytest.raises(ConfigError, match=r"shares its weight with transformer\.wte\.weight"):
        save_adapter(model, tmp_path / "tied", "tiny", extra_trainable=("lm_head",))
    merge_lora(model)
    with pytest.raises(CheckpointError, match="unmerge_lora first"):
        save_adapter(model, tmp_path / "merged", "tiny")


# --------------------------------------------------------------------------- PEFT


def _hf_twin(model: GPT, folder):
    from transformers import GPT2LMHeadModel

    checkpoints.export_hf(model, folder, include_tokenizer=False)
    return GPT2LMHeadModel.from_pretrained(folder).eval()


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_round_trip_matches_logits(tmp_path, rslora):
    from peft import PeftModel

    base = tiny_gpt()
    idx = tokens(length=16)
    hf = _hf_twin(base, tmp_path / "hf")
    model = tiny_gpt()
    inject_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.05, targets=ALL_TARGETS, rslora=rslora))
    mark_only_lora_trainable(model)
    train_step(model, idx, lr=5e-2)  # B != 0 from a real step
    model.eval()
    export_peft(model, tmp_path / "peft", str(tmp_path / "hf"))
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["fan_in_fan_out"] is True and cfg["use_rslora"] is rslora

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    with torch.no_grad():
        ours = model(idx)
        theirs = peft_model(idx).logits
        assert (ours - base(idx)).abs().max() > 1e-3  # the adapter matters ...
        assert (theirs - ours).abs().max() <= 1e-5  # ... and PEFT computes the same model

    back = tiny_gpt()
    assert import_peft(back, tmp_path / "peft") == model.lora_config
    back.eval()
    with torch.no_grad():
        assert torch.equal(back(idx), ours)


def test_import_an_adapter_written_by_peft(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = tiny_gpt()
    hf = _hf_twin(base, tmp_path / "hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_cfg = LoraConfig(r=2, lora_alpha=5, target_modules=["c_attn", "mlp.c_proj"], fan_in_fan_out=True)
        peft_model = get_peft_model(hf, peft_cfg).eval()
    torch.manual_seed(7)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    peft_model.save_pretrained(tmp_path / "peft")
    model = tiny_gpt()
    cfg = import_peft(model, tmp_path / "peft")
    assert cfg == LoRAConfig(r=2, alpha=5, targets=("c_attn", "mlp.c_proj"))
    idx = tokens()
    with torch.no_grad():
        assert (model.eval()(idx) - peft_model(idx).logits).abs().max() <= 1e-5

    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps({**peft_cfg.to_dict(), "use_dora": True}, default=list))
    with pytest.raises(CheckpointError, match="use_dora"):
        import_peft(tiny_gpt(), tmp_path / "peft")

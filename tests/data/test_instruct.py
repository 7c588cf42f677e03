"""Instruction data: reading and validation, splits, plain-text encoding, the collate function."""

from __future__ import annotations

import json
import random

import pytest
import torch

from customgpt.constants import EOT_ID, IGNORE_INDEX
from customgpt.data.instruct import (
    InstructDataConfig,
    InstructionDataset,
    InstructionRecord,
    collate_instructions,
    encode_example,
    prepare_splits,
    read_instruction_file,
    split_records,
)
from customgpt.errors import ConfigError, DataError
from customgpt.prompts import get_prompt_style
from customgpt.tokenizer import get_tokenizer

E, X = EOT_ID, IGNORE_INDEX


# --------------------------------------------------------------------------- collate


def test_collate_exact_without_masking():
    # lengths 3, 5, 1: T = 5; the first end-of-text target stays, later padding targets are ignored
    batch = [([1, 2, 3], 2), ([4, 5, 6, 7, 8], 3), ([9], 1)]
    inputs, targets = collate_instructions(batch)
    assert inputs.tolist() == [
        [1, 2, 3, E, E],
        [4, 5, 6, 7, 8],
        [9, E, E, E, E],
    ]
    assert targets.tolist() == [
        [2, 3, E, X, X],
        [5, 6, 7, 8, E],
        [E, X, X, X, X],
    ]


def test_collate_exact_with_instruction_masking():
    # prompt lengths 2, 3, 1: targets predicting prompt tokens 2..p are ignored
    batch = [([1, 2, 3], 2), ([4, 5, 6, 7, 8], 3), ([9], 1)]
    inputs, targets = collate_instructions(batch, mask_instructions=True)
    assert inputs.tolist() == [[1, 2, 3, E, E], [4, 5, 6, 7, 8], [9, E, E, E, E]]
    assert targets.tolist() == [
        [X, 3, E, X, X],
        [X, X, 7, 8, E],
        [E, X, X, X, X],
    ]


def test_collate_truncates_to_max_length():
    batch = [([1, 2, 3, 4, 5, 6], 2), ([7, 8], 1)]
    inputs, targets = collate_instructions(batch, max_length=4)
    assert inputs.tolist() == [[1, 2, 3, 4], [7, 8, E, E]]
    # the long example loses its end-of-text target; the short one keeps its first one
    assert targets.tolist() == [[2, 3, 4, 5], [8, E, X, X]]
    inputs, targets = collate_instructions(batch, max_length=4, mask_instructions=True)
    assert targets.tolist() == [[X, 3, 4, 5], [8, E, X, X]]
    # exactly max_length tokens: nothing is lost
    inputs, targets = collate_instructions([([1, 2, 3, 4], 1)], max_length=4)
    assert inputs.tolist() == [[1, 2, 3, 4]] and targets.tolist() == [[2, 3, 4, E]]


def test_collate_other_end_of_text_id():
    inputs, targets = collate_instructions([([1, 2], 1), ([3], 1)], eot_id=0)
    assert inputs.tolist() == [[1, 2], [3, 0]] and targets.tolist() == [[2, 0], [0, X]]


def _reference_collate(batch, pad_token_id=EOT_ID, ignore_index=IGNORE_INDEX, allowed_max_length=None, mask=False):
    """The reference recipe's custom_collate_fn written out (with exercise 7.2's masking)."""
    batch_max_length = max(len(item) + 1 for item, _ in batch)
    xs, ys = [], []
    for item, prompt_length in batch:
        new_item = list(item) + [pad_token_id]
        padded = new_item + [pad_token_id] * (batch_max_length - len(new_item))
        inputs, targets = torch.tensor(padded[:-1]), torch.tensor(padded[1:])
        indices = torch.nonzero(targets == pad_token_id).squeeze()
        if indices.numel() > 1:
            targets[indices[1:]] = ignore_index
        if mask:
            targets[: prompt_length - 1] = ignore_index
        if allowed_max_length is not None:
            inputs, targets = inputs[:allowed_max_length], targets[:allowed_max_length]
        xs.append(inputs)
        ys.append(targets)
    return torch.stack(xs), torch.stack(ys)


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("max_length", [None, 7])
def test_collate_equals_the_reference_on_random_batches(mask, max_length):
    rng = random.Random(0)
    for _ in range(20):
        batch = []
        for _ in range(rng.randint(1, 5)):
            ids = [rng.randrange(0, 50000) for _ in range(rng.randint(1, 12))]
            batch.append((ids, rng.randint(1, len(ids))))
        got = collate_instructions(batch, max_length=max_length, mask_instructions=mask)
        want = _reference_collate(batch, allowed_max_length=max_length, mask=mask)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# --------------------------------------------------------------------------- reading


def _write(tmp_path, name, records, jsonl=False):
    path = tmp_path / name
    text = "\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records, indent=2)
    path.write_text(text, encoding="utf-8")
    return path


GOOD = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Translate.", "input": "Hallo", "output": "Hello"},
    {"instruction": "Name a colour.", "output": "Blue"},
]


@pytest.mark.parametrize("jsonl", [False, True])
def test_reads_json_lists_and_jsonl(tmp_path, jsonl):
    path = _write(tmp_path, "data.jsonl" if jsonl else "data.json", GOOD, jsonl)
    records = read_instruction_file(path)
    assert [(r.instruction, r.input, r.output, r.index) for r in records] == [
        ("Add 2 and 3.", "", "5", 0), ("Translate.", "Hallo", "Hello", 1), ("Name a colour.", "", "Blue", 2)]
    assert records[2].raw == GOOD[2] and records[0].source == str(path)


def test_field_names_are_configurable(tmp_path):
    path = _write(tmp_path, "d.json", [{"prompt": "Say hi.", "context": "", "answer": "Hi"}])
    (record,) = read_instruction_file(path, ("prompt", "context", "answer"))
    assert (record.instruction, record.output) == ("Say hi.", "Hi")
    with pytest.raises(DataError, match=r"record 0: missing 'instruction', 'output'"):
        read_instruction_file(path)


def test_malformed_records_are_reported_by_index_with_the_file_name(tmp_path):
    bad = [
        GOOD[0],
        ["not", "an", "object"],
        {"instruction": "x"},
        {"instruction": "x", "input": 3, "output": "y"},
        {"instruction": "   ", "output": "y"},
        {"instruction": "x", "output": ""},
        GOOD[1],
    ]
    path = _write(tmp_path, "bad.json", bad)
    with pytest.raises(DataError) as info:
        read_instruction_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: 5 malformed record(s): ")
    assert "record 1: expected an object, got list" in message
    assert "record 2: missing 'output'" in message
    assert "record 3: 'input' must be a string, got int" in message
    assert "record 4: empty 'instruction'" in message
    assert "record 5: empty 'output'" in message
    path = _write(tmp_path, "bad.jsonl", [GOOD[0], {"instruction": None, "output": "y"}], jsonl=True)
    with pytest.raises(DataError, match=r"bad.jsonl: 1 malformed record\(s\): record 1 \(line 2\): 'instruction' must be a string, got NoneType"):
        read_instruction_file(path)


def test_bad_files_are_clear_errors(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"instruction": "x", "output": "y"},\n {"instruction": }]')
    with pytest.raises(DataError, match=r"broken.json: invalid JSON at line 2, column 18"):
        read_instruction_file(path)
    path.write_bytes(b'{"instruction": "caf\xe9", "output": "y"}\n')
    with pytest.raises(DataError, match=r"broken.json: not UTF-8 text \(byte 20, 0xe9\)"):
        read_instruction_file(path)
    path.write_text("  \n")
    with pytest.raises(DataError, match="the file is empty"):
        read_instruction_file(path)
    with pytest.raises(DataError, match="cannot read"):
        read_instruction_file(tmp_path / "missing.json")


# --------------------------------------------------------------------------- splits


def test_reference_order_split_of_the_registry_dataset(shared_datasets):
    cfg = InstructDataConfig(data_dir=str(shared_datasets))
    splits = prepare_splits(cfg)
    assert splits.sizes() == {"train": 935, "val": 55, "test": 110}
    data = json.loads((shared_datasets / "instruction-data.json").read_text(encoding="utf-8"))
    assert [r.raw for r in splits.train] == data[:935]
    assert [r.raw for r in splits.test] == data[935:1045]
    assert [r.raw for r in splits.val] == data[1045:]


def test_random_split_is_seeded():
    records = [InstructionRecord(f"i{k}", "", f"o{k}", index=k) for k in range(100)]
    a = split_records(records, method="random", seed=1)
    b = split_records(records, method="random", seed=1)
    c = split_records(records, method="random", seed=2)
    assert a.sizes() == {"train": 85, "val": 5, "test": 10}
    assert a == b and a.train != c.train
    assert sorted(r.index for r in a.train + a.val + a.test) == list(range(100))


def test_explicit_files(tmp_path):
    train = _write(tmp_path, "train.json", GOOD)
    val = _write(tmp_path, "val.jsonl", GOOD[:1], jsonl=True)
    splits = prepare_splits(InstructDataConfig(dataset=None, train_file=str(train), val_file=str(val)))
    assert splits.sizes() == {"train": 3, "val": 1, "test": 0}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(path="x.json"), "exactly one data source"),
        (dict(dataset=None), "exactly one data source"),
        (dict(dataset=None, train_file="t.json"), "need a validation file"),
        (dict(test_file="t.json"), "go with data.train_file"),
        (dict(train_fraction=0.9, test_fraction=0.1), "leave records for validation"),
        (dict(train_fraction=float("nan")), "must be a finite number"),
        (dict(max_length=0), "max_length"),
        (dict(output_field="instruction"), "three different keys"),
    ],
)
def test_bad_data_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        InstructDataConfig(**kwargs)


# --------------------------------------------------------------------------- tokens


def test_user_text_is_encoded_as_plain_text():
    tok = get_tokenizer()
    record = InstructionRecord("what is <|endoftext|> in GPT-2?", "", "a <|endoftext|> token")
    ids, prompt_length = encode_example(tok, get_prompt_style("alpaca"), record)
    assert EOT_ID not in ids
    prompt, response = get_prompt_style("alpaca").format_example(record.instruction, "", record.output)
    assert ids == tok.encode(prompt, allowed_special="none") + tok.encode(response, allowed_special="none")
    assert prompt_length == len(tok.encode(prompt, allowed_special="none"))


def test_separate_encoding_equals_the_references_joint_encoding(shared_datasets):
    """Prompt and response are encoded separately; for alpaca and phi3 (prompts ending in a
    newline) that equals encoding the whole text at once, as the reference does."""
    tok = get_tokenizer()
    records = read_instruction_file(shared_datasets / "instruction-data.json")[:200]
    for name in ("alpaca", "phi3"):
        style = get_prompt_style(name)
        for record in records:
            ids, _ = encode_example(tok, style, record)
            prompt, response = style.format_example(record.instruction, record.input, record.output)
            assert ids == tok.encode(prompt + response, allowed_special="none")


def test_dataset_counts_truncated_examples():
    tok = get_tokenizer()
    records = [InstructionRecord("Say hi.", "", "Hi"), InstructionRecord("Say hi.", "", "Hi " * 50)]
    style = get_prompt_style("alpaca")
    full = InstructionDataset(records, tok, style)
    assert full.n_truncated == 0
    short = InstructionDataset(records, tok, style, max_length=len(full.ids[0]))
    assert short.n_truncated == 1 and short[0] == (full.ids[0], full.prompt_lengths[0])

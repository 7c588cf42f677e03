"""Preference records, splits and the collate function: hand-built batches, malformed records."""

from __future__ import annotations

import json

import pytest
import torch

from customgpt.data.preference import (
    PreferenceDataConfig,
    PreferenceDataset,
    PreferenceExample,
    PreferenceRecord,
    collate_preference,
    prepare_preference_splits,
    read_preference_file,
)
from customgpt.errors import ConfigError, DataError
from customgpt.prompts import get_prompt_style
from customgpt.tokenizer import get_tokenizer


def test_collate_builds_both_sequences_with_response_masks():
    # pair 0: prompt [1, 2, 3], chosen [4, 5, E], rejected [6, E]
    # pair 1: prompt [7],       chosen [8, E],    rejected [9, 10, 11, E]     (E = 0 here)
    batch = [(0, PreferenceExample([1, 2, 3], [4, 5, 0], [6, 0])), (3, PreferenceExample([7], [8, 0], [9, 10, 11, 0]))]
    out = collate_preference(batch, eot_id=0)
    # sequences: [1 2 3 4 5 0], [7 8 0], [1 2 3 6 0], [7 9 10 11 0]; longest 6 -> inputs/targets of 5
    assert out.input_ids.tolist() == [[1, 2, 3, 4, 5], [7, 8, 0, 0, 0], [1, 2, 3, 6, 0], [7, 9, 10, 11, 0]]
    assert out.targets.tolist() == [[2, 3, 4, 5, 0], [8, 0, 0, 0, 0], [2, 3, 6, 0, 0], [9, 10, 11, 0, 0]]
    # the mask is true where the target is a response token: targets 4 5 E / 8 E / 6 E / 9 10 11 E
    assert out.response_mask.int().tolist() == [[0, 0, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [1, 1, 1, 1, 0]]
    assert out.indices.tolist() == [0, 3]
    chosen, rejected = out.lengths()
    assert chosen.tolist() == [3, 2] and rejected.tolist() == [2, 4]
    # precomputed reference log-probs follow the pairs' dataset indices
    ref = torch.arange(8, dtype=torch.float64).view(4, 2)
    assert collate_preference(batch, eot_id=0, reference_logps=ref).reference_logps.tolist() == [[0, 1], [6, 7]]


def test_collate_truncates_each_sequence():
    batch = [(0, PreferenceExample([1, 2, 3], [4, 5, 0], [6, 0]))]
    out = collate_preference(batch, eot_id=0, max_length=4)
    # [1 2 3 4] and [1 2 3 6]: inputs of 3; the only response targets left are 4 and 6
    assert out.input_ids.tolist() == [[1, 2, 3], [1, 2, 3]]
    assert out.targets.tolist() == [[2, 3, 4], [2, 3, 6]]
    assert out.response_mask.int().tolist() == [[0, 0, 1], [0, 0, 1]]


def test_dataset_uses_the_prompt_style_and_appends_end_of_text():
    tok = get_tokenizer()
    rec = PreferenceRecord("Say hi.", "", "Hello.", "No <|endoftext|>.")
    ds = PreferenceDataset([rec], tok, get_prompt_style("alpaca"))
    ex = ds[0][1]
    assert tok.decode(ex.prompt_ids) == get_prompt_style("alpaca").format_instruction("Say hi.")
    assert ex.chosen_ids == tok.encode("Hello.") + [tok.eot_id]
    assert ex.rejected_ids[-1] == tok.eot_id and ex.rejected_ids.count(tok.eot_id) == 1  # user text stays text
    phi3 = PreferenceDataset([rec], tok, get_prompt_style("phi3"))[0][1]
    prompt, response = get_prompt_style("phi3").format_example("Say hi.", "", "Hello.")
    assert tok.decode(phi3.prompt_ids) == prompt and tok.decode(phi3.chosen_ids[:-1]) == response


def test_prompt_longer_than_max_length_is_an_error():
    tok = get_tokenizer()
    with pytest.raises(DataError, match="no response token"):
        PreferenceDataset([PreferenceRecord("a " * 50, "", "b", "c")], tok, get_prompt_style("alpaca"), max_length=20)


def test_malformed_records_reported_by_index(tmp_path):
    records = [
        {"instruction": "ok", "input": "", "chosen": "a", "rejected": "b"},
        ["not", "an", "object"],
        {"instruction": "x", "chosen": "a"},
        {"instruction": "x", "chosen": 3, "rejected": "b"},
        {"instruction": "x", "chosen": "a", "rejected": "  "},
    ]
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError) as err:
        read_preference_file(path)
    msg = str(err.value)
    assert str(path) in msg and "4 malformed record(s)" in msg
    assert "record 1: expected an object, got list" in msg
    assert "record 2: missing 'rejected'" in msg
    assert "record 3: 'chosen' must be a string, got int" in msg
    assert "record 4: empty 'rejected'" in msg


def test_jsonl_and_custom_fields(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"q": "hi", "good": "hello", "bad": "go away"}\n\n{"q": "x", "good": "y", "bad": "z"}\n')
    cfg = PreferenceDataConfig(dataset=None, path=str(path), instruction_field="q", chosen_field="good",
                               rejected_field="bad", train_fraction=0.5, test_fraction=0.0)
    splits = prepare_preference_splits(cfg)
    assert [r.chosen for r in splits.train] == ["hello"] and [r.rejected for r in splits.val] == ["z"]


def test_reference_split_of_the_shared_data(shared_datasets):
    cfg = PreferenceDataConfig(data_dir=str(shared_datasets))
    splits = prepare_preference_splits(cfg)
    assert splits.sizes() == {"train": 935, "val": 55, "test": 110}  # as instruction tuning's
    assert splits.train[0].chosen.startswith("The spelling of the given phrase")
    limited = prepare_preference_splits(PreferenceDataConfig(data_dir=str(shared_datasets), limit=40))
    assert limited.sizes() == {"train": 34, "val": 2, "test": 4}


def test_config_errors():
    with pytest.raises(ConfigError, match="exactly one data source"):
        PreferenceDataConfig(path="x.json")
    with pytest.raises(ConfigError, match="four different keys"):
        PreferenceDataConfig(chosen_field="rejected")

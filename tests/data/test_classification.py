"""Classification data: the pandas-exact spam reading and reference split, validated user files,
splits, and batching."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from customgpt.data.classification import (
    ClassificationDataset,
    ClassifyDataConfig,
    LabelledText,
    Splits,
    collate_classification,
    decode_utf8,
    length_bucketed_batches,
    prepare_splits,
    read_labelled_file,
    read_records,
    read_sms_spam,
    reference_split,
    resolve_labels,
    stratified_split,
)
from customgpt.errors import ConfigError, DataError


def _digest(rows: list[LabelledText]) -> str:
    return hashlib.sha256("\n".join(sorted(r.text for r in rows)).encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def spam_rows(shared_datasets):
    return read_sms_spam(shared_datasets / "sms_spam_collection.zip")


# --------------------------------------------------------------------------- the spam data


def test_spam_reads_like_pandas(spam_rows):
    # pandas.read_csv(sep="\t", header=None) gives 5,572 rows from the 5,574 lines: two quoted
    # fields run across a line end. The counts below are pandas' value_counts().
    assert len(spam_rows) == 5572
    assert sum(r.label == "ham" for r in spam_rows) == 4825
    assert sum(r.label == "spam" for r in spam_rows) == 747
    assert spam_rows[0].line == 1 and spam_rows[-1].line == 5574


def test_reference_split_is_the_pandas_split(spam_rows):
    splits = reference_split(spam_rows)
    assert splits.sizes() == {"train": 1045, "val": 149, "test": 300}
    # Digests of the sorted texts of each part, computed once from the pandas reference
    # (read_csv + ham.sample(747, random_state=123) + concat + sample(frac=1, random_state=123)
    # + 70%/10% cut); our pandas-free implementation gave exactly the same rows in the same order.
    assert _digest(splits.train) == "b3045996a2e5cabc9e354c9bb5daf7ef6e636c407b9afb61159c911cca8d6b26"
    assert _digest(splits.val) == "b10b92eb55d4f0a2e799d8a90530145b323d7df25c36462513df5efc74b76832"
    assert _digest(splits.test) == "52e1ad52ee838c196c02aab44f5ad58c7ad3c2f20a70f17a682e1ff52528d07a"
    assert [sum(r.label == "spam" for r in part) for part in (splits.train, splits.val, splits.test)] == [517, 79, 151]
    # the first rows, in order (pandas' reset_index order)
    assert splits.test[0].text.startswith("85233 FREE>Ringtone!Reply REAL")
    assert reference_split(spam_rows).test == splits.test  # deterministic


def test_reference_split_depends_on_the_seed(spam_rows):
    other = reference_split(spam_rows, seed=7)
    assert other.sizes() == {"train": 1045, "val": 149, "test": 300}
    assert _digest(other.test) != _digest(reference_split(spam_rows).test)


@pytest.mark.parametrize(
    "text, expected, lines",
    [  # expected values checked against pandas.read_csv(sep="\t", header=None, keep_default_na=False)
        ('ham\t"quoted start" then more\nspam\tplain "inner" quotes\n',
         [["ham", "quoted start then more"], ["spam", 'plain "inner" quotes']], [1, 2]),
        ('ham\t"spans\nlines\tand tabs"\nspam\tnext\n', [["ham", "spans\nlines\tand tabs"], ["spam", "next"]], [1, 3]),
        ('ham\t"a ""doubled"" quote"\n\nspam\tafter blank\n', [["ham", 'a "doubled" quote'], ["spam", "after blank"]], [1, 3]),
        ("ham\tno newline at end", [["ham", "no newline at end"]], [1]),
        ("ham\tx\r\nspam\ty\r\n", [["ham", "x"], ["spam", "y"]], [1, 2]),
    ],
)
def test_pandas_tokenizer_rules(text, expected, lines):
    records = read_records(text, "x", "\t")
    assert [fields for _, fields in records] == expected
    assert [line for line, _ in records] == lines


def test_unclosed_quote_is_an_error(tmp_path):
    with pytest.raises(DataError, match="^x: line 2: a quoted field is never closed$"):
        read_records('ham\tok\nspam\t"never closed\n', "x", "\t")
    path = _write(tmp_path, "open.csv", 'text,label\nhi,a\n"runs to the end,b\nbye,a\n')
    with pytest.raises(DataError, match=rf"^{path}: line 3: a quoted field is never closed$"):
        read_labelled_file(path)


def test_spam_file_with_bad_rows_names_lines(tmp_path):
    path = tmp_path / "SMSSpamCollection"
    path.write_text("ham\thello\nmaybe\tnot a label\nspam\t \nham\tfine\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_sms_spam(path)
    message = str(err.value)
    assert str(path) in message and "2 bad row(s)" in message
    assert "line 2: unknown label 'maybe'" in message and "line 3: empty text" in message


# --------------------------------------------------------------------------- user files


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def test_csv_tsv_jsonl_read_with_line_numbers(tmp_path):
    csv_path = _write(tmp_path, "d.csv", 'label,text\npos,"great, really"\n\nneg,"two\nlines"\nneu,meh\n')
    rows = read_labelled_file(csv_path)
    assert [(r.label, r.text, r.line) for r in rows] == [
        ("pos", "great, really", 2), ("neg", "two\nlines", 4), ("neu", "meh", 6)]
    tsv_path = _write(tmp_path, "d.tsv", "body\tcat\nhello there\ta\nbye\tb\n")
    rows = read_labelled_file(tsv_path, text_column="body", label_column="cat")
    assert [(r.label, r.line) for r in rows] == [("a", 2), ("b", 3)]
    jsonl_path = _write(tmp_path, "d.jsonl", '{"text": "x y", "label": 1}\n\n{"text": "z", "label": 0}\n')
    rows = read_labelled_file(jsonl_path)
    assert [(r.label, r.line) for r in rows] == [("1", 1), ("0", 3)]


# 17.3: a user's TSV is read literally (one line, one row); headers and label types are checked.


def test_tsv_field_starting_with_a_quote_does_not_swallow_the_next_lines(tmp_path):
    # the input: a quote opens a field, the closing quote comes three lines later
    path = _write(tmp_path, "msgs.tsv", 'text\tlabel\n"Free entry now\tspam\nsee you at 5\tham\n'
                                        'call me\tham\nok" thanks\tham\n')
    rows = read_labelled_file(path)
    assert [(r.text, r.label, r.line) for r in rows] == [
        ('"Free entry now', "spam", 2), ("see you at 5", "ham", 3), ("call me", "ham", 4), ('ok" thanks', "ham", 5)]


def test_tsv_quotes_anywhere_are_ordinary_characters(tmp_path):
    path = _write(tmp_path, "q.tsv", 'label\ttext\r\nham\t""doubled"" stays\r\nspam\t"quoted\ttab"\r\n')
    with pytest.raises(DataError) as err:  # the tab inside the quotes splits the row: 3 fields
        read_labelled_file(path)
    assert str(err.value) == f"{path}: 1 bad row(s): line 3: expected 2 fields, got 3"
    path.write_text('label\ttext\nham\t""doubled"" stays\nspam\t"open\n')
    assert [r.text for r in read_labelled_file(path)] == ['""doubled"" stays', '"open']


def test_header_with_a_duplicate_column_is_an_error(tmp_path):
    path = _write(tmp_path, "dup.csv", "text,label,text\nhello,a,again\n")
    with pytest.raises(DataError) as err:
        read_labelled_file(path)
    assert str(err.value) == (f"{path}: line 1 (header): column(s) 'text' appear more than once; every column "
                              "needs its own name")
    tsv = _write(tmp_path, "dup.tsv", "label\ttext\tlabel\tlabel\na\thello\tb\tc\n")
    with pytest.raises(DataError, match=r"dup\.tsv: line 1 \(header\): column\(s\) 'label' appear more than once"):
        read_labelled_file(tsv)


def test_text_column_equal_to_label_column_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        ClassifyDataConfig(dataset=None, path="x.csv", split="stratified", text_column="label")
    assert str(err.value) == ("text_column: equals data.label_column ('label'); the texts and the labels "
                              "must be two different columns")  # the config loader adds "data." and the origin
    path = _write(tmp_path, "same.csv", "body,label\nhi,a\n")
    with pytest.raises(DataError) as err:
        read_labelled_file(path, text_column="body", label_column="body")
    assert str(err.value) == (f"{path}: the text column and the label column are both 'body'; set "
                              "data.text_column and data.label_column to two different columns")


def test_labels_mixing_integers_and_strings_are_an_error(tmp_path):
    path = _write(tmp_path, "mixed.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "spam"}\n')
    with pytest.raises(DataError) as err:
        read_labelled_file(path)
    assert str(err.value) == (f"{path}: 'label' mixes integers (first on line 1) and strings (first on line 2); "
                              "write every label the same way")
    path.write_text('{"text": "a", "label": "1"}\n{"text": "b", "label": "1"}\n\n{"text": "c", "label": 0}\n')
    with pytest.raises(DataError, match=r"mixes integers \(first on line 4\) and strings \(first on line 1\)"):
        read_labelled_file(path)


def test_csv_field_over_128_kib_is_read(tmp_path):
    import csv

    big = "spam " * 40_000  # 200,000 characters, over the csv module's 131,072 default
    path = tmp_path / "big.csv"
    path.write_text(f'text,label\n"{big}",spam\nshort,ham\n', encoding="utf-8")
    before = csv.field_size_limit()
    rows = read_labelled_file(path)
    assert [(len(r.text), r.label, r.line) for r in rows] == [(200_000, "spam", 2), (5, "ham", 3)]
    assert csv.field_size_limit() == before  # the module's limit is left as it was
    tsv = tmp_path / "big.tsv"
    tsv.write_text(f"text\tlabel\n{big}\tspam\n", encoding="utf-8")
    assert len(read_labelled_file(tsv)[0].text) == 200_000


def test_one_class_error_names_the_file(tmp_path):
    # 17.13: the training file holds one class only
    path = _write(tmp_path, "one.csv", "text,label\n" + "".join(f"text {i},ham\n" for i in range(10)))
    with pytest.raises(DataError) as err:
        prepare_splits(ClassifyDataConfig(dataset=None, train_file=str(path)))
    assert str(err.value) == f"{path}: classification needs at least 2 classes; the training rows have only 'ham'"
    jsonl = _write(tmp_path, "one.jsonl", "".join(f'{{"text": "t{i}", "label": 3}}\n' for i in range(10)))
    with pytest.raises(DataError, match=rf"^{jsonl}: classification needs at least 2 classes; .* only '3'$"):
        prepare_splits(ClassifyDataConfig(dataset=None, path=str(jsonl), split="stratified"))
    with pytest.raises(DataError, match=r"^data\.labels: classification needs at least 2 classes, got \['ham'\]$"):
        prepare_splits(ClassifyDataConfig(dataset=None, train_file=str(path), labels=["ham"]))


def test_empty_file(tmp_path):
    for name in ("e.csv", "e.jsonl"):
        with pytest.raises(DataError, match=rf"{name}: the file is empty"):
            read_labelled_file(_write(tmp_path, name, "\n  \n"))
    with pytest.raises(DataError, match="no rows after the header"):
        read_labelled_file(_write(tmp_path, "h.csv", "text,label\n"))


def test_missing_column_names_header(tmp_path):
    path = _write(tmp_path, "d.csv", "message,label\nhi,a\n")
    with pytest.raises(DataError, match=r"d\.csv: line 1 \(header\): missing column\(s\) 'text'; columns are 'message', 'label'"):
        read_labelled_file(path)
    jpath = _write(tmp_path, "d.jsonl", '{"text": "a", "label": "x"}\n{"message": "b", "label": "y"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl: 1 bad row\(s\): line 2: missing key\(s\) 'text'"):
        read_labelled_file(jpath)


def test_every_bad_row_is_reported(tmp_path):
    path = _write(tmp_path, "d.csv", "text,label\nok,a\n ,a\nfine,\nalso fine,c\nx,a,extra\n")
    with pytest.raises(DataError) as err:
        read_labelled_file(path, labels=["a", "b"])
    message = str(err.value)
    assert message.startswith(f"{path}: 4 bad row(s)")
    assert "line 3: empty text" in message
    assert "line 4: empty label" in message
    assert "line 5: unknown label 'c' (declared labels: a, b)" in message
    assert "line 6: expected 2 fields, got 3" in message


def test_many_bad_rows_are_capped(tmp_path):
    path = _write(tmp_path, "d.jsonl", "".join('{"text": "", "label": "a"}\n' for _ in range(30)))
    with pytest.raises(DataError, match=r"30 bad row\(s\).*line 20: empty text in column 'text'; \.\.\. and 10 more"):
        read_labelled_file(path)


def test_non_utf8_bytes_name_the_lines(tmp_path):
    path = _write(tmp_path, "d.csv", b"text,label\ngood,a\nbad \xff byte,a\nalso \xc3 bad,b\n")
    with pytest.raises(DataError) as err:
        read_labelled_file(path)
    message = str(err.value)
    assert str(path) in message
    assert "line 3: invalid UTF-8 byte 0xff at column 5" in message and "line 4:" in message
    assert "line 2" not in message
    assert decode_utf8(b"\xef\xbb\xbfok", "x") == "ok"  # a BOM is fine


def test_invalid_json_and_types(tmp_path):
    path = _write(tmp_path, "d.jsonl", '{"text": "a", "label": "x"}\nnot json\n[1]\n{"text": 3, "label": "x"}\n')
    with pytest.raises(DataError) as err:
        read_labelled_file(path)
    message = str(err.value)
    assert "line 2: invalid JSON" in message and "line 3: expected a JSON object" in message
    assert "line 4: 'text' must be a string" in message


def test_unknown_format(tmp_path):
    with pytest.raises(DataError, match="cannot tell the format"):
        read_labelled_file(_write(tmp_path, "d.txt", "a"))
    rows = read_labelled_file(_write(tmp_path, "d.txt", "text\tlabel\nhi\ta\n"), fmt="tsv")
    assert rows[0].text == "hi"


# --------------------------------------------------------------------------- splits and labels


def _rows(n_a: int, n_b: int) -> list[LabelledText]:
    return [LabelledText(f"a{i}", "a", "f", i) for i in range(n_a)] + [LabelledText(f"b{i}", "b", "f", i) for i in range(n_b)]


def test_stratified_split_keeps_class_shares():
    splits = stratified_split(_rows(80, 20), val_fraction=0.1, test_fraction=0.2, seed=1)
    assert splits.sizes() == {"train": 70, "val": 10, "test": 20}
    for part, (a, b) in ((splits.train, (56, 14)), (splits.val, (8, 2)), (splits.test, (16, 4))):
        assert (sum(r.label == "a" for r in part), sum(r.label == "b" for r in part)) == (a, b)
    all_texts = [r.text for part in (splits.train, splits.val, splits.test) for r in part]
    assert sorted(all_texts) == sorted(r.text for r in _rows(80, 20))  # a partition
    again = stratified_split(_rows(80, 20), val_fraction=0.1, test_fraction=0.2, seed=1)
    assert again.test == splits.test


def test_labels_resolved_and_checked():
    splits = Splits(_rows(3, 2), [LabelledText("c?", "c", "v.csv", 7)])
    with pytest.raises(DataError, match=r"v\.csv: line 7: label 'c'"):
        resolve_labels(splits, None)
    assert resolve_labels(Splits(_rows(3, 2), _rows(1, 1)), None) == ["a", "b"]
    assert resolve_labels(Splits(_rows(3, 2), _rows(1, 1)), ["b", "a"]) == ["b", "a"]
    with pytest.raises(DataError, match="at least 2 classes"):
        resolve_labels(Splits(_rows(3, 0), _rows(1, 0)), None)


def test_prepare_splits_sources(shared_datasets, tmp_path):
    splits, labels = prepare_splits(ClassifyDataConfig(data_dir=str(shared_datasets)))
    assert labels == ["ham", "spam"] and splits.sizes() == {"train": 1045, "val": 149, "test": 300}
    strat, _ = prepare_splits(ClassifyDataConfig(data_dir=str(shared_datasets), split="stratified"))
    assert strat.sizes() == {"train": 3901, "val": 557, "test": 1114}

    lines = "".join(json.dumps({"text": f"t{i}", "label": "xyz"[i % 3]}) + "\n" for i in range(60))
    path = _write(tmp_path, "all.jsonl", lines)
    splits, labels = prepare_splits(ClassifyDataConfig(dataset=None, path=str(path), split="stratified"))
    assert labels == ["x", "y", "z"] and splits.sizes() == {"train": 42, "val": 6, "test": 12}
    splits, _ = prepare_splits(ClassifyDataConfig(dataset=None, train_file=str(path), val_file=str(path)))
    assert splits.sizes() == {"train": 60, "val": 60, "test": 0}
    splits, _ = prepare_splits(ClassifyDataConfig(dataset=None, train_file=str(path), test_file=str(path)))
    assert splits.sizes() == {"train": 54, "val": 6, "test": 60}


def test_data_config_errors():
    with pytest.raises(ConfigError, match="exactly one data source"):
        ClassifyDataConfig(dataset="sms-spam", path="x.csv")
    with pytest.raises(ConfigError, match="exactly one data source"):
        ClassifyDataConfig(dataset=None)
    with pytest.raises(ConfigError, match="reference split"):
        ClassifyDataConfig(dataset=None, path="x.csv")
    with pytest.raises(DataError, match="not a classification dataset"):
        prepare_splits(ClassifyDataConfig(dataset="the-verdict"))
    with pytest.raises(ConfigError, match=r"^val_fraction: must be in \[0, 1\), got 1\.0$"):
        ClassifyDataConfig(val_fraction=1.0)


# --------------------------------------------------------------------------- tensors


def test_dataset_truncates_and_counts():
    rows = [LabelledText("a b c d e", "x"), LabelledText("a b", "y")]
    encode = lambda s: [ord(c) for c in s.replace(" ", "")]  # noqa: E731 - one token per letter
    ds = ClassificationDataset(rows, ["x", "y"], encode, max_length=3)
    assert ds.longest == 5 and ds.num_truncated == 1
    assert ds[0] == ([97, 98, 99], 0) and ds[1] == ([97, 98], 1)
    full = ClassificationDataset(rows, ["x", "y"], encode)
    assert full.max_length == 5 and full.num_truncated == 0


def test_collate_right_pads():
    batch = collate_classification([([5, 6, 7], 1), ([8], 0)], pad_id=99)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 99, 99]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long


def test_length_bucketed_batches_cover_each_example_once():
    lengths = [(i * 37) % 50 + 1 for i in range(103)]
    g = torch.Generator().manual_seed(0)
    batches = length_bucketed_batches(lengths, 8, generator=g, bucket_batches=4)
    flat = [i for b in batches for i in b]
    assert len(batches) == 12 and all(len(b) == 8 for b in batches)  # 103 // 8, remainder dropped
    assert len(set(flat)) == len(flat) == 96
    # inside a batch the lengths are close: far less spread than in a random batch
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 15
    kept = length_bucketed_batches(lengths, 8, generator=torch.Generator().manual_seed(0), drop_last=False)
    assert sorted(i for b in kept for i in b) == list(range(103))
    again = length_bucketed_batches(lengths, 8, generator=torch.Generator().manual_seed(0), bucket_batches=4)
    assert again == batches  # seeded: the same epoch order

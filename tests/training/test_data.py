"""Record parsing, bad-data errors, anchor sampling and batch construction."""
import gzip
import json

import pytest
import torch

from vllm_dspark.training.data import (
    DataError,
    Record,
    anchor_range,
    global_batch_indices,
    make_batch,
    read_records,
    sample_anchors,
    tokenizer_fingerprint,
)

from train_helpers import make_tokenizer, tiny_train_config, write_records


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        read_records(tmp_path / "empty.jsonl", vocab_size=96, max_seq_len=64)
    with pytest.raises(DataError, match="does not exist"):
        read_records(tmp_path / "missing.jsonl", vocab_size=96, max_seq_len=64)


def test_over_long_record_error_skip_truncate(tmp_path):
    rows = [{"prompt_token_ids": list(range(5, 45)), "response_token_ids": list(range(50, 80))},  # 70 tokens
            {"prompt_token_ids": [5, 6], "response_token_ids": [7, 8, 9]}]
    path = _write(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"d.jsonl:1: prompt \(40 tokens\) \+ response \(30 tokens\) = 70 tokens, "
                                        r"over max_seq_len=64"):
        read_records(path, vocab_size=96, max_seq_len=64)
    recs, stats = read_records(path, vocab_size=96, max_seq_len=64, long="skip")
    assert [r.line for r in recs] == [2] and stats["skipped_long"] == 1
    recs, stats = read_records(path, vocab_size=96, max_seq_len=64, long="truncate")
    assert stats["truncated"] == 1
    assert recs[0].prompt_ids == list(range(11, 45))  # the prompt's end is kept, next to the response
    assert recs[0].response_ids == list(range(50, 80))


def test_ids_outside_the_vocabulary_are_refused(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"prompt_token_ids": [5, 200], "response_token_ids": [7, 8]}])
    with pytest.raises(DataError, match=r"ids \[200\] outside \[0, 96\).*tokenized for another model"):
        read_records(path, vocab_size=96, max_seq_len=64)


def test_fingerprint_of_another_tokenizer_is_refused(tmp_path):
    tok = make_tokenizer()
    other = tokenizer_fingerprint(make_tokenizer(vocab_size=90))
    assert other != tokenizer_fingerprint(tok)
    path = write_records(tmp_path / "d.jsonl", 3, fingerprint=other)
    with pytest.raises(DataError, match="tokenizer does not match the target"):
        read_records(path, vocab_size=96, tokenizer=tok, max_seq_len=64)
    ok = write_records(tmp_path / "ok.jsonl", 3, fingerprint=tokenizer_fingerprint(tok))
    assert len(read_records(ok, vocab_size=96, tokenizer=tok, max_seq_len=64)[0]) == 3


def test_tokenizer_larger_than_the_target_vocabulary_is_refused(tmp_path, tiny_target, tiny_data):
    from vllm_dspark.training.trainer import train

    import shutil
    target = tmp_path / "target"
    shutil.copytree(tiny_target, target)
    make_tokenizer(vocab_size=120).save_pretrained(target)
    with pytest.raises(DataError, match="tokenizer has 120 tokens but the target's vocab_size is 96"):
        train(tiny_train_config(target, tiny_data, tmp_path / "out"))


def test_text_records_and_gzip(tmp_path):
    tok = make_tokenizer()
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"prompt": "w5 w6 w7", "response": "w8 w9 <|endoftext|>"}) + "\n")
        f.write(json.dumps({"messages": [{"role": "user", "content": "w5"}, {"role": "assistant", "content": "w6 w7"}]}) + "\n")
    with pytest.raises(DataError, match="d.jsonl.gz:2: chat data needs a tokenizer with a chat template"):
        read_records(path, vocab_size=96, tokenizer=tok, max_seq_len=64)
    tok.chat_template = "{% for m in messages %}<|im_start|> {{ m['content'] }} <|im_end|> {% endfor %}"
    recs, _ = read_records(path, vocab_size=96, tokenizer=tok, max_seq_len=64)
    assert recs[0].prompt_ids == [5, 6, 7] and recs[0].response_ids == [8, 9, 0]
    assert recs[1].prompt_ids == [3, 5, 4] and recs[1].response_ids == [6, 7]


def test_malformed_rows(tmp_path):
    for rows, match in [
        ([{"foo": 1}], 'expected "prompt_token_ids"'),
        ([{"prompt_token_ids": [5]}], 'without "response_token_ids"'),
        ([{"prompt_token_ids": [], "response_token_ids": [5, 6]}], "prompt is empty"),
        ([{"prompt_token_ids": "5 6", "response_token_ids": [5]}], "must be a list of ints"),
    ]:
        with pytest.raises(DataError, match=match):
            read_records(_write(tmp_path / "d.jsonl", rows), vocab_size=96, max_seq_len=64)
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="bad.jsonl:1: not valid JSON"):
        read_records(tmp_path / "bad.jsonl", vocab_size=96, max_seq_len=64)
    with pytest.raises(DataError, match="none of its 1 records is usable"):
        read_records(_write(tmp_path / "d.jsonl", [{"prompt_token_ids": [5], "response_token_ids": [6]}]),
                     vocab_size=96, max_seq_len=64)


def test_anchors_are_deterministic_distinct_and_in_range():
    rec = Record(1, list(range(10, 20)), list(range(30, 60)))  # prompt 10, response 30 -> positions 0..39
    assert anchor_range(rec, "response") == (10, 38) and anchor_range(rec, "all") == (1, 38)
    a = sample_anchors(rec, 8, "response", seed=1, step=3, index=7)
    assert a == sample_anchors(rec, 8, "response", seed=1, step=3, index=7)
    assert a != sample_anchors(rec, 8, "response", seed=1, step=4, index=7)
    assert len(set(a)) == 8 and all(10 <= x <= 38 for x in a) and a == sorted(a)
    assert sample_anchors(rec, 100, "response", 0, 0, 0) == list(range(10, 39))


def test_batch_labels_and_previous_tokens_by_hand():
    recs = [Record(1, [5, 6, 7], [8, 9, 10, 11]), Record(2, [20, 21], [22, 23])]
    b = make_batch(recs, [0, 1], gamma=3, num_anchors=5, region="response", seed=0, step=0, pad_id=1)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22, 23, 1, 1, 1]]
    assert b.anchors[0].tolist() == [3, 4, 5, 1, 1] and b.anchor_valid[0].tolist() == [True] * 3 + [False] * 2
    assert b.anchors[1, 0].item() == 2 and b.anchor_valid[1].tolist() == [True] + [False] * 4
    # anchor 3 (token 8): labels x4..x6 = 9, 10, 11; previous tokens x3..x5 = 8, 9, 10
    assert b.labels[0, 0].tolist() == [9, 10, 11] and b.prev_ids[0, 0].tolist() == [8, 9, 10]
    # anchor 5 (token 10): only x6 = 11 exists
    assert b.slot_valid[0, 2].tolist() == [True, False, False] and b.labels[0, 2, 0].item() == 11
    assert b.slot_valid[1, 0].tolist() == [True, False, False] and b.labels[1, 0, 0].item() == 23
    assert b.target_positions[0, 0].tolist() == [3, 4, 5]


def test_global_batches_cover_each_record_once_per_epoch():
    seen = [i for step in range(5) for i in global_batch_indices(10, 4, seed=3, step=step)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert seen[:8] == global_batch_indices(10, 8, seed=3, step=0)  # independent of how it is cut

"""Tokenized once into memory-mapped shards, streamed per rank (puma_mdm.prepared)."""

import itertools
import json
import tracemalloc

import numpy as np
import pytest
import torch

from puma_mdm.prepared import PreparedData, PreparedDataError, ShardStream, byte_ranges
from puma_mdm.tasks import build_task
from tinygsm_files import write_gsm8k, write_tinygsm


def task_for(tmp_path, n=300, **options):
    train = write_tinygsm(tmp_path / "train.jsonl", n)
    test = write_gsm8k(tmp_path / "test.jsonl", 5)
    opts = {"train_data": str(train), "eval_data": str(test), "seq_len": 700, "workers": 1}
    return build_task("tinygsm", opts | options)


def read_pairs(path):
    return [(r["question"], r["code"]) for r in map(json.loads, path.read_text().splitlines())]


def test_byte_ranges_cut_at_line_starts_and_cover_the_file(tmp_path):
    path = write_tinygsm(tmp_path / "t.jsonl", 50)
    data = path.read_bytes()
    ranges = byte_ranges(path, 7)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    assert all(a == b for (_, a), (b, _) in itertools.pairwise(ranges))
    assert all(data[a - 1 : a] == b"\n" for a, _ in ranges[1:])


@pytest.mark.parametrize("workers", [1, 2])
def test_shards_hold_what_the_task_encodes_in_file_order(tmp_path, workers):
    task = task_for(tmp_path, workers=workers)
    pairs = read_pairs(tmp_path / "train.jsonl")
    manifest = task.prepare()
    assert len(manifest["shards"]) >= workers
    data = PreparedData(task.prepared_dir)
    want = task.encode(pairs, skip_long=True)
    got = task.train_examples()
    assert manifest["rows"] == len(data) == len(want) and manifest["skipped"] == 0
    assert torch.equal(got.x0, want.x0) and torch.equal(got.prompt_mask, want.prompt_mask)
    assert all(isinstance(ids, np.memmap) for ids in data.ids)
    assert data.ids[0].dtype == np.uint16 and manifest["max_id"] == int(want.x0.max())


def test_rows_longer_than_seq_len_are_skipped_and_counted(tmp_path):
    task = task_for(tmp_path, seq_len=300)
    pairs = read_pairs(tmp_path / "train.jsonl")
    fits = [p for p in pairs if len(p[0].encode()) + len(p[1].encode()) + 2 <= 300]
    assert 0 < len(fits) < len(pairs)
    manifest = task.prepare()
    assert manifest["rows"] == len(fits) and manifest["skipped"] == len(pairs) - len(fits)


def test_a_bad_line_is_named_by_its_number_and_nothing_is_left_behind(tmp_path):
    task = task_for(tmp_path)
    path = tmp_path / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[41] = '{"question": "no code"}'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PreparedDataError, match=r"train.jsonl: line 42: needs string fields"):
        task.prepare()
    assert not task.prepared_dir.exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_stale_or_damaged_shards_are_refused(tmp_path):
    task = task_for(tmp_path)
    task.prepare()
    other = build_task("tinygsm", {**task.options.__dict__, "seq_len": 600})
    with pytest.raises(PreparedDataError, match="seq_len 700, the config 600"):
        other.training_data()
    with open(tmp_path / "train.jsonl", "a") as f:
        f.write("\n")
    with pytest.raises(PreparedDataError, match="the source file changed"):
        task.training_data()
    task.prepare(force=True)
    shard = next(task.prepared_dir.glob("*.ids"))
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(PreparedDataError, match="missing or truncated"):
        task.training_data()


def rows_of(x0):
    return [tuple(r) for r in x0.tolist()]


def test_each_rank_streams_its_own_blocks_once_per_epoch_and_resumes_exactly(tmp_path):
    task = task_for(tmp_path, n=260)
    task.prepare()
    data = PreparedData(task.prepared_dir)
    everything = rows_of(task.train_examples().x0)
    seen = []
    for rank in range(2):
        stream = ShardStream(data, rank, 2, seed=rank, block_rows=16)
        epoch = rows_of(stream.take(stream.rows_per_epoch)[0])
        assert len(set(epoch)) == len(epoch) == stream.rows_per_epoch
        seen += epoch
        second = rows_of(stream.take(stream.rows_per_epoch)[0])
        assert sorted(second) == sorted(epoch) and second != epoch  # reshuffled
    assert sorted(seen) == sorted(everything)

    stream = ShardStream(data, 0, 2, seed=3, block_rows=16)
    stream.take(37)
    state = stream.state_dict()
    ahead = stream.take(200)
    again = ShardStream(data, 0, 2, seed=0, block_rows=16)
    again.load_state_dict(state)
    behind = again.take(200)
    assert torch.equal(ahead[0], behind[0]) and torch.equal(ahead[1], behind[1])
    assert again.consumed == 237


def test_streaming_holds_no_copy_of_the_corpus(tmp_path):
    """Opening and streaming allocate about a block, not the corpus (uint16 ids on disk)."""
    task = task_for(tmp_path, n=3000, seq_len=512)
    task.prepare()
    corpus_bytes = sum(p.stat().st_size for p in task.prepared_dir.glob("*.ids"))
    tracemalloc.start()
    stream = ShardStream(PreparedData(task.prepared_dir), seed=0, block_rows=64)
    for _ in range(20):
        stream.take(32)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # a batch of 32 rows as int64 ids and bool masks ≈ 150 KB; the corpus ≈ 3 MB
    assert corpus_bytes > 1_000_000 and peak < corpus_bytes / 5, (peak, corpus_bytes)

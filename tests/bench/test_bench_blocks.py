"""``puma bench blocks``: both exact forms of the block-diffusion step, timed side by side."""

import json

import pytest

from puma_mdm.bench.blocks import run_blocks_bench
from puma_mdm.errors import PumaError

TINY = dict(length=16, batch_size=2, dim=32, n_layers=1, vocab_size=8, repeats=2, device="cpu")


def test_blocks_bench_times_both_forms_per_block_size(tmp_path):
    report = run_blocks_bench(tmp_path, block_sizes=[4, 8], precision="fp32", **TINY)
    saved = json.loads((tmp_path / "blocks.json").read_text())
    assert saved["rows"] == report["rows"]
    assert [row["block_size"] for row in saved["rows"]] == [4, 8]
    assert [row["blocks"] for row in saved["rows"]] == [4, 2]
    for row in saved["rows"]:
        assert row["vectorised_seconds"] > 0 and row["loop_seconds"] > 0
        ratio = row["loop_seconds"] / row["vectorised_seconds"]
        assert row["loop_over_vectorised"] == pytest.approx(ratio)
    assert saved["settings"]["precision"] == "fp32"
    assert (tmp_path / "blocks.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(block_sizes=[5]), "--block-sizes: block size 5"),
        (dict(block_sizes=[]), "--block-sizes is empty"),
        (dict(block_sizes=[4], precision="fp64"), "--precision"),
        (dict(block_sizes=[4], device="gpu"), "--device 'gpu'"),
    ],
)
def test_blocks_bench_refuses_bad_settings(tmp_path, options, message):
    with pytest.raises(PumaError, match=message):
        run_blocks_bench(tmp_path, **{**TINY, **options})
    assert not (tmp_path / "blocks.json").exists()

"""``puma bench calls`` on tiny saved models of the sort task."""

import json

import pytest
import torch

from puma_mdm.bench.calls import block_ends, cached_step, run_calls_bench, summarise, variants
from puma_mdm.cli import main
from puma_mdm.errors import PumaError
from puma_mdm.model import KVCache, ModelConfig, Transformer
from sort_models import saved


def test_calls_bench_times_every_block_end_of_every_variant(tmp_path):
    models = [
        saved(tmp_path, "block", block_size=4),
        saved(tmp_path, "arm", causal=True, shift=True),
    ]
    report = run_calls_bench(
        models, [16, 32], [12], [1, 3], tmp_path / "out", repeats=2, every=3, precision="fp32"
    )
    results = report["results"]
    # each model itself, then (dim, length) (16, 12) and (32, 12)
    shapes = [(r["model"], r["dim"], r["seq_len"], r["trained"]) for r in results[::2]]
    seq_len = results[0]["seq_len"]
    assert shapes == [
        ("block", 16, seq_len, True),
        ("block", 16, 12, False),
        ("block", 32, 12, False),
        ("arm", 16, seq_len, True),
        ("arm", 16, 12, False),
        ("arm", 32, 12, False),
    ]
    assert [r["batch_size"] for r in results] == [1, 3] * 6
    by_shape = {(r["model"], r["seq_len"], r["batch_size"]): r for r in results}
    block, arm = by_shape[("block", 12, 1)], by_shape[("arm", 12, 1)]
    assert [c["end"] for c in block["calls"]] == [4, 8, 12]
    assert {c["forwarded_cached"] for c in block["calls"]} == {4}
    assert [c["end"] for c in arm["calls"]] == [2, 3, 6, 9, 12]
    assert {c["forwarded_cached"] for c in arm["calls"]} == {1}
    for result in results:
        calls = result["calls"]
        cheapest = min(calls[0]["uncached_s"], *(c["cached_s"] for c in calls))
        assert result["floor_s"] == cheapest > 0
        assert all(c["ratio"] == pytest.approx(c["uncached_s"] / c["cached_s"]) for c in calls)
        expected = sum(c["uncached_s"] for c in calls) / sum(c["cached_s"] for c in calls)
        assert result["decode_ratio"] == pytest.approx(expected)
    written = json.loads((tmp_path / "out" / "calls.json").read_text())
    assert written["results"] == json.loads(json.dumps(results))
    assert (tmp_path / "out" / "calls.png").stat().st_size > 0


def test_summary_ceiling_puts_every_cached_call_at_the_floor():
    rows = [
        {"forwarded_uncached": 4, "uncached_s": 1.0, "cached_s": 1.5},
        {"forwarded_uncached": 8, "uncached_s": 3.0, "cached_s": 2.0},
    ]
    summary = summarise(rows)
    assert summary["floor_s"] == 1.0
    assert summary["decode_ratio"] == pytest.approx(4.0 / 3.5)
    assert summary["decode_ceiling"] == pytest.approx(2.0)
    assert summary["mean_uncached_s"] == 2.0 and summary["mean_cached_s"] == 1.75
    rows[1]["cached_s"] = 0.5  # a cached call cheaper than the first uncached one sets the floor
    assert summarise(rows)["floor_s"] == 0.5
    assert summarise(rows)["decode_ceiling"] == pytest.approx(4.0)


def test_block_ends_start_where_a_cached_call_has_something_to_decode():
    assert block_ends(ModelConfig(seq_len=10, block_size=4), 3) == (4, [4, 8])
    assert block_ends(ModelConfig(seq_len=7, causal=True, shift=True), 3) == (1, [2, 3, 6])


def test_variants_refuse_shapes_the_model_cannot_take():
    model = Transformer(ModelConfig(vocab_size=5, seq_len=6, dim=16, n_heads=4, block_size=2))
    with pytest.raises(PumaError, match="divisible by n_heads"):
        variants(model, [18], [])
    tabled = Transformer(
        ModelConfig(vocab_size=5, seq_len=3, dim=16, position_tables={"row": [0, 1, 2]})
    )
    with pytest.raises(PumaError, match="position table"):
        variants(tabled, [], [6])
    assert [m.cfg.seq_len for m in variants(model, [], [6, 8])] == [6, 8]
    assert torch.equal(variants(model, [], [])[0].embed.weight, model.embed.weight)


def test_calls_bench_refuses_models_without_an_exact_cache(tmp_path, capsys):
    mdm = saved(tmp_path, "mdm")
    code = main(["bench", "calls", "--model", mdm, "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no exact prefix cache" in err and len(err.strip().splitlines()) == 1
    assert main(["bench", "calls", "--out-dir", str(tmp_path / "o")]) == 2
    assert "--model" in capsys.readouterr().err


@pytest.mark.parametrize("kind", [{"block_size": 4}, {"causal": True, "shift": True}])
def test_the_timed_cached_call_gives_the_uncached_logits(kind):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=7, seq_len=12, dim=16, n_layers=2, **kind)).eval()
    x = torch.randint(0, 7, (3, 12))
    width, ends = block_ends(model.cfg, 3)
    cache = KVCache(len(model.blocks), 12)
    with torch.no_grad():
        for end in ends:
            step = cached_step(model, x, cache, end, width)
            for _ in range(2):  # repeatable: a timed call commits nothing
                got = step()
            want = model(x[:, :end])[:, end - width :]
            assert torch.allclose(got, want, atol=1e-5), end
            assert cache.length == end - width - model.cfg.shift


def test_calls_bench_from_the_command_line(tmp_path, capsys):
    block = saved(tmp_path, "block", block_size=4)
    out = tmp_path / "o"
    arguments = ["--model", block, "--seq-lens", "12", "--batch-sizes", "2", "--repeats", "1"]
    assert main(["bench", "calls", *arguments, "--precision", "fp32", "--out-dir", str(out)]) == 0
    report = json.loads((out / "calls.json").read_text())
    assert [(r["seq_len"], r["batch_size"]) for r in report["results"]][1:] == [(12, 2)]
    assert report["settings"]["precision"] == "fp32" and report["settings"]["repeats"] == 1
    assert "decode ratio" in capsys.readouterr().out

"""``puma bench sampling`` on tiny saved models of the sort task, and the decoding options of
``puma eval``, ``solve`` and ``sample``."""

import json

import pytest

from puma_mdm.bench.sampling import pareto, run_sampling_bench
from puma_mdm.cli import main
from puma_mdm.errors import PumaError
from sort_models import saved

PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"


def test_sampling_bench_runs_every_usable_cache_and_writes_json_and_png(tmp_path):
    models = [
        saved(tmp_path, "block", block_size=4),
        saved(tmp_path, "arm", causal=True, shift=True),
        saved(tmp_path, "mdm"),
    ]
    report = run_sampling_bench(
        models, ["k=1", "eb=0.5"], [1, 4], 8, 2, tmp_path / "out", precision="fp32"
    )
    rows = report["rows"]
    caches = {(r["model"], r["cache"]) for r in rows}
    assert caches == {
        ("block", "none"),
        ("block", "prefix"),
        ("arm", "none"),
        ("arm", "prefix"),
        ("mdm", "none"),
        ("mdm", "dual"),
    }
    assert len(rows) == 3 * 2 * 2 * 2
    assert all(r["identical_to_uncached"] for r in rows if r["cache"] in ("none", "prefix"))
    assert {r["examples"] for r in rows if r["batch_size"] == 1} == {2}
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["nfe"] >= 1 for r in rows)
    assert len(report["cache_speedups"]) == len(rows) // 2
    saved_report = json.loads((tmp_path / "out" / "sampling.json").read_text())
    assert saved_report["rows"] == json.loads(json.dumps(rows))
    assert (tmp_path / "out" / "sampling.png").stat().st_size > 0


def test_pareto_keeps_only_undominated_points():
    assert pareto([(10, 50), (5, 40), (7, 30), (20, 90), (20, 60)]) == [
        (5, 40),
        (10, 50),
        (20, 90),
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--decoders", "k=0"], "k"),
        (["--decoders", "fast"], "not k=N"),
        (["--model", "nolabel"], "NAME=DIRECTORY"),
        (["--caches", "none,turbo"], "turbo"),
        (["--batch-sizes", "0"], "less than 1"),
    ],
)
def test_sampling_bench_rejects_bad_options(tmp_path, capsys, arguments, message):
    code = main(["bench", "sampling", "--out-dir", str(tmp_path), *arguments])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_solve_with_the_entropy_bound_and_refused_caches(capsys):
    assert main(["solve", PUZZLE, "--entropy-bound", "0.3"]) in (0, 1)
    out = capsys.readouterr().out
    assert "solved" in out or "INVALID" in out
    for bad, message in [
        (["--cache", "prefix"], "exact only"),
        (["--entropy-bound", "-1"], "--entropy-bound"),
        (["--entropy-bound", "0.3", "--threshold", "0.9"], "not several"),
        (["--entropy-sum", "0.3", "--entropy-bound", "0.3"], "not several"),
        (["--entropy-sum", "inf"], "--entropy-sum"),
        (["--cache", "dual", "--refresh", "0"], "refresh"),
    ]:
        assert main(["solve", PUZZLE, *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_eval_table_has_entropy_bounded_rows_beside_k(tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["eval", "--n", "4", "--policies", "margin", "--ks", "1", "--thresholds", ""]
    rules = ["--entropy-bounds", "0.3", "--entropy-sums", "0.3"]
    assert main([*args, *rules, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["k"], r["entropy_bound"], r["entropy_sum"], r["cache"]) for r in rows] == [
        (1, None, None, "none"),
        (None, 0.3, None, "none"),
        (None, None, 0.3, "none"),
    ]
    for row in rows:  # a batch runs until its slowest row is done
        assert row["nfe_per_example"] <= row["nfe"] <= rows[0]["nfe"]
        assert row["nfe_per_example"] <= rows[0]["nfe_per_example"]
    assert main([*args, "--entropy-bounds", "x"]) == 2
    assert main([*args, "--entropy-sums", "-1"]) == 2
    assert main([*args, "--ks", "0"]) == 2
    assert main([*args, "--cache", "dual", "--refresh", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["cache"] == "dual"
    capsys.readouterr()


def test_bench_sampling_module_errors_are_puma_errors(tmp_path):
    with pytest.raises(PumaError, match="precision"):
        run_sampling_bench(["a=b"], ["k=1"], [1], 1, 1, tmp_path, precision="fp8")


def test_each_batch_is_decoded_once_untimed_before_it_is_timed(tmp_path, monkeypatch):
    import puma_mdm.bench.sampling as bench

    seen = []

    def counting(model, x_t, *args, **kwargs):
        seen.append(x_t.shape[0])
        return bench_sample(model, x_t, *args, **kwargs)

    bench_sample = bench.sample
    monkeypatch.setattr(bench, "sample", counting)
    timed = []
    real_clock = bench.time.perf_counter
    monkeypatch.setattr(bench.time, "perf_counter", lambda: timed.append(len(seen)) or real_clock())
    run_sampling_bench([saved(tmp_path, "mdm")], ["k=1"], [3], 7, 1, tmp_path, caches=("none",))
    assert seen == [3, 3, 1] * 2  # 7 examples in batches of 3: all once, then all timed
    assert timed[:6] == [3, 4, 4, 5, 5, 6]  # each clock pair brackets one timed call

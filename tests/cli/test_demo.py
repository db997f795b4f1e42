import json

from puma_mdm.bundled import default_model
from puma_mdm.cli import main


def test_demo_runs_end_to_end_with_the_shipped_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo caches puzzles under ./data
    args = ["demo", "--steps", "4", "--n-eval", "6", "--out-dir", str(tmp_path / "demo")]
    tiny = [
        "model.dim=32",
        "model.n_layers=1",
        "model.n_heads=2",
        "task.options.n_train=64",
        "task.options.n_eval=16",
        "training.batch_size=8",
    ]
    assert main([*args, *tiny]) == 0
    out = capsys.readouterr().out
    assert "margin" in out and "solution:" in out
    rows = json.loads((tmp_path / "demo" / "eval.json").read_text())
    assert len(rows) == 4 * 3 + 4 and all(r["n"] == 6 for r in rows)
    assert (tmp_path / "demo" / "decode_order.png").stat().st_size > 1000
    assert (default_model() / "model.safetensors").is_file()

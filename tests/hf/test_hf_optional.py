"""Without the hf extra the core package imports and trains, and every HF feature says which
extra to install (checked in a subprocess where transformers, tokenizers and accelerate cannot
be imported, whether or not they are installed here)."""

import subprocess
import sys

SCRIPT = r"""
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("transformers", "tokenizers", "accelerate"):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, Blocked())

from puma_mdm.cli import main
from puma_mdm.errors import PumaError
import puma_mdm.hf.adapter, puma_mdm.hf.export, puma_mdm.hf.tokenizer  # import fine, fail on use
from puma_mdm.hf.tokenizer import load_tokenizer

run = ["train", "--config", "sort", "--out-dir", sys.argv[1], "training.steps=2",
       "task.options.n_train=64", "eval.examples=8", "task.options.n_eval=8", "model.dim=16",
       "model.n_layers=1", "model.n_heads=2", "logging.progress=false",
       "logging.tensorboard=false", "checkpoint.every=0", "eval.every=0"]
assert main(run) == 0
assert "transformers" not in sys.modules
hf_run = [*run[:4], sys.argv[1] + "/hf-run", *run[5:]]  # a new run directory
assert main([*hf_run, "model.hf_path=" + sys.argv[1]]) == 2
assert main(["export", "--model", sys.argv[1], "--to", "hf", sys.argv[1] + "/hf"]) == 2
for use in (lambda: load_tokenizer(sys.argv[1]),
            lambda: __import__("puma_mdm.hf.trainer_integration")):
    try:
        use()
    except PumaError as err:
        print(f"error: {err}", file=sys.stderr)
"""


def test_the_core_works_and_hf_features_name_the_extra_without_transformers(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 4, out.stderr
    for line in errors:
        assert "pip install 'puma-mdm[hf]'" in line, line
    assert "model.hf_path" in errors[0] and "puma export" in errors[1]
    assert "--tokenizer" in errors[2] and "PumaTrainer" in errors[3]

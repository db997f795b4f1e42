"""Write TinyGSM- and GSM8K-format files and a tokenizer directory of a chosen vocabulary size
(Qwen2's, 151,646 ids, by default), so the 125M recipe can be timed and `puma prepare`
measured without the real data. The problems are the math task's generated ones; the
tokenizer is a whitespace word-level one padded with unused words up to the vocabulary size
(the network's cost depends on the vocabulary size, not on which words it holds).

    python scripts/synthetic_tinygsm.py OUT_DIR [--problems N] [--vocab V]
"""

import argparse
import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers

from puma_mdm.tasks.math_programs import all_patterns, generate_problems

EOS = "<|endoftext|>"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--problems", type=int, default=100_000)
    parser.add_argument("--eval", type=int, default=1319, help="GSM8K-format test problems")
    parser.add_argument("--vocab", type=int, default=151_646)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    patterns = all_patterns(1, 4)
    words = {EOS, "[UNK]"}
    with open(args.out / "train.jsonl", "w") as f:
        for p in generate_problems(args.problems, patterns, seed=0):
            code = p.program.replace("def solution():", "def simple_math_problem():")
            words.update(p.question.split() + code.split())
            f.write(json.dumps({"question": p.question, "code": code}) + "\n")
    with open(args.out / "test.jsonl", "w") as f:
        for p in generate_problems(args.eval, patterns, seed=1):
            words.update(p.question.split())
            answer = f"#### {p.answer}"
            f.write(json.dumps({"question": p.question, "answer": answer}) + "\n")
    if len(words) > args.vocab:
        raise SystemExit(f"--vocab {args.vocab} is below the {len(words)} words the data uses")
    vocab = {w: i for i, w in enumerate(sorted(words))}
    vocab |= {f"<unused{i}>": i for i in range(len(vocab), args.vocab)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    directory = args.out / "tokenizer"
    directory.mkdir(exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {"eos_token": EOS, "unk_token": "[UNK]"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    print(f"{args.out}: {args.problems} + {args.eval} problems, tokenizer of {args.vocab} ids")


if __name__ == "__main__":
    main()

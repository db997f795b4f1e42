"""Synthetic TinyGSM- and GSM8K-format files (the math task's generated problems, with the
program's function renamed as TinyGSM names it), for the tests of the tinygsm task."""

import json
from pathlib import Path

from puma_mdm.tasks.math_programs import all_patterns, generate_problems

ENTRY = "simple_math_problem"


def problems(n: int, seed: int = 0):
    return generate_problems(n, all_patterns(1, 3), seed)


def write_tinygsm(path: Path, n: int, seed: int = 0) -> Path:
    with open(path, "w") as f:
        for p in problems(n, seed):
            code = p.program.replace("def solution():", f"def {ENTRY}():")
            f.write(json.dumps({"question": p.question, "code": code}) + "\n")
    return path


def write_gsm8k(path: Path, n: int, seed: int = 1) -> Path:
    with open(path, "w") as f:
        for p in problems(n, seed):
            answer = f"Some reasoning.\n#### {p.answer:,}"
            f.write(json.dumps({"question": p.question, "answer": answer}) + "\n")
    return path

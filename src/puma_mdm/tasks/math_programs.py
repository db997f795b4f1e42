"""Grade-school word problems solved by writing a Python program: the PUMA paper's TinyGSM →
GSM8K protocol at CPU scale (docs/algorithms.md §5).

A problem follows one named quantity (``Ava has 12 stickers.``) through 1–4 arithmetic steps,
each an addition, subtraction, multiplication or exact division phrased in one of several
ways, with an optional distractor sentence that the solution must ignore, and ends with a
question. Its solution is a short program that names every quantity::

    def solution():
        stickers = 12
        bought = 5
        stickers = stickers + bought
        result = stickers
        return result

**Splits.** A problem's *pattern* is its sequence of step kinds (e.g. add, mul, sub). A fixed
share of the patterns with ≥ 2 steps (``heldout_fraction``, chosen by ``split_seed``) is used
only by the held-out set, so held-out accuracy measures whether the model composes steps it
has seen into sequences it has not.

**Sequences.** ``[question] <sep> [program] <eos> … <eos>`` (``seq_len`` tokens); the question
and ``<sep>`` are the prompt. The ``<eos>`` padding is part of the target (see
``tasks/tokenized.py``). A decoded program is judged by running it in the sandbox and
comparing its number with the reference program's (``math.isclose``, relative 1e-6).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from puma_mdm.errors import PumaError
from puma_mdm.sandbox import Limits, Outcome, run_programs
from puma_mdm.tasks.base import Examples
from puma_mdm.tasks.registry import register_task
from puma_mdm.tasks.tokenized import TokenizedTask, TokenizerOptions

KINDS = ("add", "sub", "mul", "div")
OPERATORS = {"add": "+", "sub": "-", "mul": "*", "div": "//"}
NAMES = (
    ("Ava", "she"), ("Ben", "he"), ("Chloe", "she"), ("Diego", "he"), ("Emma", "she"),
    ("Farah", "she"), ("Gus", "he"), ("Hana", "she"), ("Ivan", "he"), ("Jade", "she"),
    ("Kofi", "he"), ("Lena", "she"), ("Milo", "he"), ("Nora", "she"), ("Omar", "he"),
    ("Priya", "she"), ("Quinn", "he"), ("Rosa", "she"), ("Sam", "he"), ("Tara", "she"),
)  # fmt: skip
ITEMS = (
    "apples", "stickers", "marbles", "cookies", "books", "coins", "pencils", "shells",
    "cards", "stamps", "balloons", "crayons", "buttons", "beads", "candles", "eggs",
    "flowers", "toys", "rocks", "tickets", "cupcakes", "feathers",
)  # fmt: skip
PRONOUNS = {
    "he": {"He": "He", "he": "he", "him": "him", "his": "his", "himself": "himself"},
    "she": {"He": "She", "he": "she", "him": "her", "his": "her", "himself": "herself"},
}
START = (
    "{name} has {n} {item}.",
    "{name} starts the day with {n} {item}.",
    "There are {n} {item} in {name}'s bag.",
)
# kind → (sentence, the variable its number gets in the program)
STEPS = {
    "add": (
        ("{He} buys {n} more {item}.", "bought"),
        ("{He} finds {n} {item} on the way home.", "found"),
        ("{friend} gives {him} {n} {item}.", "received"),
        ("Later {he} picks up another {n} {item}.", "picked"),
    ),
    "sub": (
        ("{He} gives {n} {item} to {friend}.", "given"),
        ("{He} loses {n} {item}.", "lost"),
        ("{He} sells {n} of {his} {item}.", "sold"),
        ("{He} uses {n} {item} for a project.", "used"),
    ),
    "mul": (
        ("{He} now has {n} times as many {item} as before.", "factor"),
        ("The number of {item} grows {n}-fold.", "growth"),
        ("Each of {his} {item} is traded for {n} new ones.", "per_item"),
    ),
    "div": (
        ("{He} splits {his} {item} equally into {n} boxes and keeps one box.", "boxes"),
        ("{He} shares the {item} equally among {n} kids and keeps one share.", "kids"),
        ("{He} keeps only one in every {n} {item}.", "group"),
    ),
}
QUESTIONS = (
    "How many {item} does {name} have now?",
    "How many {item} does {name} have at the end?",
    "How many {item} does {name} end up with?",
)
DISTRACTORS = (
    "{friend} has {n} {other}.",
    "{name} is {n} years old.",
    "The shop is {n} minutes away.",
    "{friend} owns {n} {other}.",
)
INDENT = "    "
PRONOUN = re.compile(r"\{(He|he|him|his)\}")
BPE_PROBLEMS = 5000  # generated problems a BPE tokenizer is trained on


class MathTaskError(PumaError):
    """Math-program data that cannot be used as asked."""


@dataclass(frozen=True)
class Problem:
    question: str
    program: str
    answer: int
    pattern: tuple[str, ...]


def all_patterns(min_steps: int, max_steps: int) -> list[tuple[str, ...]]:
    return [p for n in range(min_steps, max_steps + 1) for p in itertools.product(KINDS, repeat=n)]


def heldout_patterns(max_steps: int, fraction: float, split_seed: int) -> set[tuple[str, ...]]:
    """The patterns (≥ 2 steps) reserved for the held-out set."""
    candidates = all_patterns(2, max_steps)
    count = round(fraction * len(candidates))
    return set(random.Random(f"heldout-{split_seed}").sample(candidates, count))


def next_value(kind: str, value: int, rng: random.Random, max_value: int) -> tuple[int, int] | None:
    """(the step's number, the new value), or None when this kind cannot apply to ``value``."""
    if kind == "add":
        n = rng.randint(2, 30)
        return (n, value + n) if value + n <= max_value else None
    if kind == "sub":
        return None if value < 3 else (n := rng.randint(2, value - 1), value - n)
    if kind == "mul":
        n = rng.randint(2, 5)
        return (n, value * n) if value * n <= max_value else None
    divisors = [d for d in range(2, 7) if value % d == 0]
    return None if not divisors else (n := rng.choice(divisors), value // n)


def make_problem(
    pattern: Sequence[str], rng: random.Random, distractors: float, max_value: int
) -> Problem | None:
    """One problem with the given step kinds, or None when the numbers drawn do not fit."""
    (name, gender), friend = rng.choice(NAMES), rng.choice(NAMES)[0]
    while friend == name:
        friend = rng.choice(NAMES)[0]
    item = rng.choice(ITEMS)
    other = rng.choice([i for i in ITEMS if i != item])
    words = {"name": name, "friend": friend, "item": item, "other": other, **PRONOUNS[gender]}
    distractor_at = rng.randrange(len(pattern) + 1) if rng.random() < distractors else None
    value = rng.randint(2, 50)
    sentences = [rng.choice(START).format(n=value, **words)]
    code = [f"{item} = {value}"]
    used: set[str] = set()
    for i, kind in enumerate(pattern):
        step = next_value(kind, value, rng, max_value)
        if step is None:
            return None
        n, value = step
        text, var = rng.choice(STEPS[kind])
        if var in used:  # the same phrasing twice: bought, bought_2, ...
            var = next(f"{var}_{j}" for j in itertools.count(2) if f"{var}_{j}" not in used)
        used.add(var)
        if i == distractor_at:  # after it a pronoun could mean someone else: name them once
            sentences.append(rng.choice(DISTRACTORS).format(n=rng.randint(2, 60), **words))
            text = PRONOUN.sub(lambda m: name + ("'s" if m[1] == "his" else ""), text, count=1)
        sentences.append(text.format(n=n, **words))
        code += [f"{var} = {n}", f"{item} = {item} {OPERATORS[kind]} {var}"]
    if distractor_at == len(pattern):
        sentences.append(rng.choice(DISTRACTORS).format(n=rng.randint(2, 60), **words))
    sentences.append(rng.choice(QUESTIONS).format(**words))
    body = [*code, f"result = {item}", "return result"]
    program = "def solution():\n" + "".join(f"{INDENT}{line}\n" for line in body)
    return Problem(" ".join(sentences), program, value, tuple(pattern))


def generate_problems(
    n: int,
    patterns: Sequence[tuple[str, ...]],
    seed: int,
    distractors: float = 0.5,
    max_value: int = 999,
) -> list[Problem]:
    """``n`` problems; the number of steps is uniform over the lengths present in
    ``patterns``, then the pattern is uniform among those of that length."""
    rng = random.Random(seed)
    by_length: dict[int, list[tuple[str, ...]]] = {}
    for p in patterns:
        by_length.setdefault(len(p), []).append(p)
    lengths = sorted(by_length)
    problems: list[Problem] = []
    while len(problems) < n:
        pattern = rng.choice(by_length[rng.choice(lengths)])
        problem = make_problem(pattern, rng, distractors, max_value)
        if problem is not None:
            problems.append(problem)
    return problems


def read_problems(path: str | Path) -> list[tuple[str, str]]:
    """(question, program) pairs from a JSONL file with ``question`` and ``program`` (or
    ``code``, as in TinyGSM) fields."""
    path = Path(path)
    if not path.is_file():
        raise MathTaskError(f"no such file: {path}")
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise MathTaskError(f"{path}: line {lineno} is not JSON ({err.msg})") from None
        program = record.get("program", record.get("code")) if isinstance(record, dict) else None
        if not isinstance(program, str) or not isinstance(record.get("question"), str):
            raise MathTaskError(
                f"{path}: line {lineno} needs string fields 'question' and 'program' (or 'code')"
            )
        pairs.append((record["question"], program))
    if not pairs:
        raise MathTaskError(f"{path} holds no problems")
    return pairs


@dataclass
class MathOptions(TokenizerOptions):
    tokenizer: str = "bpe"
    bpe_vocab: int = 1024  # the generator uses fewer words; the BPE stops at ≈ 670 ids
    seq_len: int = 160  # tokens: question, <sep>, program, <eos> padding
    n_train: int = 50000
    n_eval: int = 1000
    min_steps: int = 1
    max_steps: int = 4
    distractors: float = 0.5  # chance that a problem has one distractor sentence
    heldout_fraction: float = 0.2  # share of the ≥ 2-step patterns used only for evaluation
    split_seed: int = 0  # which patterns are held out
    max_value: int = 999  # no intermediate value exceeds this
    seed: int = 0  # problem generation; the held-out set uses another seed
    train_data: str | None = None  # JSONL of {question, program} instead of generated problems
    eval_data: str | None = None
    timeout: float = 2.0  # seconds each executed program may run

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(
                f"need 1 ≤ min_steps ≤ max_steps, got {self.min_steps} and {self.max_steps}"
            )
        if self.max_steps < 2:
            raise ValueError(
                "max_steps must be ≥ 2: held-out problems use step patterns of ≥ 2 steps "
                "that training never shows"
            )
        if self.n_train < 1 or self.n_eval < 1:
            raise ValueError(f"n_train and n_eval must be ≥ 1, got {self.n_train}, {self.n_eval}")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if not 0 <= self.distractors <= 1:
            raise ValueError(f"distractors must be in [0, 1], got {self.distractors}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")


@register_task
class MathTask(TokenizedTask):
    name = "math"
    Options = MathOptions
    needs_prompt = True  # the model writes a program for a question

    @property
    def seq_len(self) -> int:
        return self.options.seq_len

    # -- problems --------------------------------------------------------------------------------
    def split(self) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
        """(training patterns, held-out patterns)."""
        o = self.options
        held = heldout_patterns(o.max_steps, o.heldout_fraction, o.split_seed)
        train = [p for p in all_patterns(o.min_steps, o.max_steps) if p not in held]
        return train, sorted(held)

    def train_problems(self) -> list[tuple[str, str]]:
        o = self.options
        if o.train_data:
            return read_problems(o.train_data)
        problems = generate_problems(o.n_train, self.split()[0], o.seed, o.distractors, o.max_value)
        return [(p.question, p.program) for p in problems]

    def eval_problems(self) -> list[tuple[str, str]]:
        o = self.options
        if o.eval_data:
            return read_problems(o.eval_data)
        seed = o.seed + 7919
        problems = generate_problems(o.n_eval, self.split()[1], seed, o.distractors, o.max_value)
        return [(p.question, p.program) for p in problems]

    def tokenizer_texts(self) -> Iterator[str]:
        o = self.options
        if o.train_data:
            return (f"{q}\n{p}" for q, p in read_problems(o.train_data))
        # the generator's vocabulary is small: a few thousand problems show all of it
        n = min(o.n_train, BPE_PROBLEMS)
        problems = generate_problems(n, self.split()[0], o.seed, o.distractors, o.max_value)
        return (f"{p.question}\n{p.program}" for p in problems)

    # -- sequences -------------------------------------------------------------------------------
    def prompt_ids(self, text: str) -> list[int]:
        return [*self.tokenizer.encode(text), self.tokenizer.sep_id]

    def encode(self, pairs: Sequence[tuple[str, str]], skip_long: bool = False) -> Examples:
        """(question, program) pairs → ``[question] <sep> [program] <eos>…`` with the question
        and ``<sep>`` as prompt. A pair longer than ``seq_len`` is an error, or left out with
        ``skip_long`` (generated data: about 1 problem in 10⁴ at the defaults)."""
        x0, prompt_len = self.encode_ids(pairs, skip_long)
        prompt = np.arange(self.seq_len) < prompt_len[:, None]
        return Examples(torch.from_numpy(x0), torch.from_numpy(prompt))

    def encode_ids(
        self, pairs: Sequence[tuple[str, str]], skip_long: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """What :meth:`encode` makes, as arrays: ids (N, L) and each row's prompt length."""
        tok, L = self.tokenizer, self.seq_len
        questions = tok.encode_batch([q for q, _ in pairs])
        programs = tok.encode_batch([p for _, p in pairs])
        x0 = np.full((len(pairs), L), tok.eos_id, dtype=np.int64)
        prompt_len = np.zeros(len(pairs), dtype=np.int64)
        for i, (q, p) in enumerate(zip(questions, programs, strict=True)):
            ids = [*q, tok.sep_id, *p]
            if len(ids) + 1 > L and not skip_long:
                raise MathTaskError(
                    f"problem {i + 1} needs {len(ids) + 1} tokens (question, program and one "
                    f"<eos>), more than task.options.seq_len={L}; raise seq_len"
                )
            if len(ids) + 1 <= L:
                x0[i, : len(ids)] = ids
                prompt_len[i] = len(q) + 1
        keep = prompt_len > 0
        return x0[keep], prompt_len[keep]

    def train_examples(self) -> Examples:
        return self.encode(self.train_problems(), skip_long=not self.options.train_data)

    def eval_examples(self) -> Examples:
        return self.encode(self.eval_problems(), skip_long=not self.options.eval_data)

    def load_examples(self, path: str | Path) -> Examples:
        return self.encode(read_problems(path))

    # -- judging ---------------------------------------------------------------------------------
    entry = "solution"  # the function a program defines and the sandbox calls

    def run(self, programs: Sequence[str]) -> list[Outcome]:
        return run_programs(programs, self.entry, Limits(timeout=self.options.timeout))

    def correct(self, tokens: torch.Tensor, examples: Examples) -> torch.Tensor:
        """Run each decoded program and its reference; correct when both return numbers that
        agree."""
        rows = range(len(tokens))
        generated = [self.completion(tokens[i], examples.prompt_mask[i]) for i in rows]
        reference = [self.completion(examples.x0[i], examples.prompt_mask[i]) for i in rows]
        outcomes = self.run(generated + reference)
        got, want = outcomes[: len(rows)], outcomes[len(rows) :]
        for i, w in enumerate(want):
            if not w.ok:
                raise MathTaskError(f"reference program {i} does not run: {w.error}")
        return torch.tensor(
            [
                g.ok and math.isclose(g.value, w.value, rel_tol=1e-6)
                for g, w in zip(got, want, strict=True)
            ],
            dtype=torch.bool,
        )

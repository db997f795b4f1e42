import json
import math
import random

import pytest
import torch

from puma_mdm.losses import mdm_loss
from puma_mdm.masking import ExampleStream, ProgressivePool, mask_count
from puma_mdm.sandbox import run_programs
from puma_mdm.tasks import build_task
from puma_mdm.tasks.math_programs import (
    KINDS,
    MathTaskError,
    all_patterns,
    generate_problems,
    heldout_patterns,
    make_problem,
)

SMALL = {"n_train": 300, "n_eval": 60}


def oracle_logits(x0: torch.Tensor, vocab: int) -> torch.Tensor:
    """Logits that put (nearly) all probability on the true token."""
    return torch.full((*x0.shape, vocab), -20.0).scatter_(2, x0.unsqueeze(2), 20.0)


@pytest.fixture(scope="module")
def task():
    return build_task("math", SMALL)


@pytest.fixture(scope="module")
def examples(task):
    return task.train_examples()


def test_reference_programs_compute_the_stated_answers(task):
    """Patterns of 1–4 steps (all of ≤ 2 steps, a sample of the longer ones), with and without
    distractors: running the program gives the answer the generator tracked, and the question
    states every number the program uses."""
    rng = random.Random(1)
    problems = []
    for pattern in [*all_patterns(1, 2), *rng.sample(all_patterns(3, 4), 60)]:
        problem = None
        while problem is None:
            problem = make_problem(pattern, rng, distractors=0.5, max_value=999)
        problems.append(problem)
    outcomes = run_programs([p.program for p in problems])
    assert [o.value for o in outcomes] == [p.answer for p in problems]
    for p in problems:
        assert p.answer >= 1 and p.program.startswith("def solution():\n")
        for line in p.program.splitlines()[1:]:
            value = line.strip().partition(" = ")[2]
            if value.isdigit():
                assert value in p.question, (value, p.question)
        assert p.question.count("?") == 1 and p.question.endswith("?")


def test_held_out_problems_use_patterns_training_never_shows(task):
    train_patterns, held = task.split()
    assert held and not set(held) & set(train_patterns)
    assert all(len(p) >= 2 for p in held)
    assert {(k,) for k in KINDS} <= set(train_patterns)  # every single step is trained
    train = generate_problems(400, train_patterns, seed=0)
    heldout = generate_problems(100, held, seed=1)
    assert not {p.pattern for p in heldout} & {p.pattern for p in train}
    assert not {p.question for p in heldout} & {p.question for p in train}
    assert heldout_patterns(4, 0.2, 0) == set(held)  # fixed by split_seed alone
    assert heldout_patterns(4, 0.2, 1) != set(held)


def test_generation_and_tokenizer_are_deterministic(task, examples):
    """A resumed run (or another DDP rank) rebuilds the very same data and BPE tokenizer."""
    patterns = task.split()[0]
    assert generate_problems(50, patterns, 3) == generate_problems(50, patterns, 3)
    assert generate_problems(50, patterns, 3) != generate_problems(50, patterns, 4)
    again = build_task("math", SMALL)
    assert again.tokenizer.to_json() == task.tokenizer.to_json()
    assert torch.equal(again.train_examples().x0, examples.x0)


def test_sequence_layout_question_sep_program_eos(task, examples):
    tok = task.tokenizer
    assert examples.x0.shape == (len(examples), task.seq_len) and len(examples) == 300
    for x0, prompt in zip(examples.x0[:20], examples.prompt_mask[:20], strict=True):
        n_prompt = int(prompt.sum())
        assert prompt[:n_prompt].all() and x0[n_prompt - 1] == tok.sep_id
        target = x0[~prompt].tolist()
        end = target.index(tok.eos_id)
        assert all(t == tok.eos_id for t in target[end:])  # padding: <eos> to the end
        assert tok.eos_id not in x0[prompt].tolist()
        assert task.completion(x0, prompt).startswith("def solution():\n")


def test_eos_padding_counts_as_target_everywhere(task, examples):
    """EOS positions are outside the prompt: in L_eff, maskable, scored by the loss, and
    revealed by the PUMA pool like any other token."""
    tok = task.tokenizer
    x0, prompt = examples.x0[:64], examples.prompt_mask[:64]
    pad = (x0 == tok.eos_id) & ~prompt
    gen = torch.Generator().manual_seed(0)
    batch = mask_count(x0, prompt, task.mask_id, gen)
    assert (batch.masked & pad).any()
    n_masked = batch.masked.sum(1).float()
    assert torch.allclose(batch.weights, 1 / n_masked)
    # a model right everywhere except at EOS pays exactly for the masked EOS positions
    logits = oracle_logits(x0, task.vocab_size)
    logits[..., tok.eos_id] = torch.where(pad, -20.0, logits[..., tok.eos_id])
    per_row = (batch.masked & pad).sum(1) / n_masked
    uniform = math.log(task.vocab_size)  # every logit equal at the padding
    assert mdm_loss(logits, batch).item() == pytest.approx(uniform * per_row.mean().item(), 1e-4)
    # the pool: L_eff includes the padding, which is revealed, most confident first
    pool = ProgressivePool(ExampleStream(x0, prompt), 64, task.mask_id, [[4, 0]], seed=0)
    b = pool.batch(0)
    hidden = b.masked.sum(1)
    assert torch.equal(b.masked | (b.x_t == b.x0), torch.ones_like(b.masked))
    assert (hidden <= (~b.prompt_mask).sum(1)).all() and (b.masked & (b.x0 == tok.eos_id)).any()
    confidence = torch.where(b.x0 == tok.eos_id, 10.0, 5.0)  # surer of EOS than of code
    logits = torch.zeros(*b.x0.shape, task.vocab_size)
    pool.update(logits.scatter_(2, b.x0.unsqueeze(2), confidence.unsqueeze(2)))
    revealed = b.masked & (pool.x_t != task.mask_id)
    stayed = pool.phase != 0
    assert revealed[stayed].any()
    # wherever some masked EOS stayed hidden, no masked program token was revealed instead
    eos = b.x0 == tok.eos_id
    for row in stayed.nonzero().flatten().tolist():
        if (b.masked[row] & eos[row] & ~revealed[row]).any():
            assert not (revealed[row] & ~eos[row]).any()


def test_decoded_text_stops_at_the_first_eos(task, examples):
    tok = task.tokenizer
    x0, prompt = examples.x0[0].clone(), examples.prompt_mask[0]
    program = task.completion(x0, prompt)
    first = int((~prompt).nonzero()[0])
    junk = tok.encode("return 99")
    end = x0.tolist().index(tok.eos_id, first)
    x0[end + 1 : end + 1 + len(junk)] = torch.tensor(junk)  # garbage after the end
    assert task.completion(x0, prompt) == program
    x0[first + 3] = tok.eos_id  # an early end truncates the program
    assert task.completion(x0, prompt) == task.text_of(x0[first : first + 3].tolist())


def test_correct_runs_programs_and_compares_numbers(task, examples):
    ex = examples[:6]
    assert task.correct(ex.x0, ex).all()
    tok = task.tokenizer
    tokens = ex.x0.clone()
    rewritten = [  # a different program with the same answer is right; a wrong one is not
        "def solution():\n    return {}\n",
        "def solution():\n    return {} + 1\n",
        "def solution():\n    while True:\n        pass\n",
    ]
    references = [task.completion(x, p) for x, p in zip(ex.x0, ex.prompt_mask, strict=True)]
    answers = [o.value for o in run_programs(references)]
    for row, template in enumerate(rewritten):
        start = int(ex.prompt_mask[row].sum())
        ids = [*tok.encode(template.format(answers[row])), tok.eos_id]
        tokens[row, start:] = tok.eos_id
        tokens[row, start : start + len(ids)] = torch.tensor(ids)
    assert task.correct(tokens, ex).tolist() == [True, False, False, True, True, True]


def test_problems_from_a_file(task, tmp_path):
    path = tmp_path / "problems.jsonl"
    rows = [
        {"question": "What is 6 times 7?", "code": "def solution():\n    return 6 * 7\n"},
        {"question": "Half of 9?", "program": "def solution():\n    return 9 / 2\n"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ex = task.load_examples(path)
    assert len(ex) == 2 and task.correct(ex.x0, ex).all()
    path.write_text('{"question": "no program"}\n')
    with pytest.raises(MathTaskError, match="line 1 needs string fields"):
        task.load_examples(path)
    path.write_text("{broken\n")
    with pytest.raises(MathTaskError, match="line 1 is not JSON"):
        task.load_examples(path)
    long = {"question": "x " * 300, "program": "def solution():\n    return 1\n"}
    path.write_text(json.dumps(long))
    with pytest.raises(MathTaskError, match=r"more than task\.options\.seq_len=160"):
        task.load_examples(path)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_steps": 1, "min_steps": 1}, "max_steps must be ≥ 2"),
        ({"min_steps": 3, "max_steps": 2}, "min_steps ≤ max_steps"),
        ({"heldout_fraction": 1.0}, "heldout_fraction"),
        ({"tokenizer": " "}, "tokenizer is empty"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(Exception, match=message):
        build_task("math", options)

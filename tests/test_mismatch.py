import json
import math
from itertools import combinations

import numpy as np
import pytest
import torch

from puma_mdm import sample
from puma_mdm.cli import main
from puma_mdm.errors import PumaError
from puma_mdm.mismatch import Mismatch, decoder_states, measure_mismatch
from puma_mdm.model import ModelConfig, Transformer
from puma_mdm.tasks.base import Examples

MASK = 2  # the crafted models below have two tokens, 0 and 1
P_OPEN, P_SHUT = 0.9, 0.6
ANSWER = [1, 0, 0, 1, 1, 0, 1, 0]
PROMPT = [0, 4]  # position 0 and a prompt in the middle


class LeftNeighbour(torch.nn.Module):
    """p(answer_i) = P_OPEN at a masked position whose left neighbour is not masked (position 0
    counts as open), P_SHUT otherwise; the other token gets the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("answer", torch.tensor(ANSWER))

    def p_answer(self, masked: torch.Tensor) -> torch.Tensor:
        left_masked = torch.cat([torch.zeros_like(masked[:, :1]), masked[:, :-1]], 1)
        return torch.where(left_masked, P_SHUT, P_OPEN)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        p = self.p_answer(ids == MASK)
        logits = torch.stack([(1 - p).log(), (1 - p).log()], -1)
        return logits.scatter(-1, self.answer.expand_as(ids).unsqueeze(-1), p.log().unsqueeze(-1))


class CountOnly(LeftNeighbour):
    """p(answer_i) depends only on how many positions of the row are masked."""

    def p_answer(self, masked: torch.Tensor) -> torch.Tensor:
        fraction = masked.float().mean(1, keepdim=True)
        return (0.55 + 0.4 * fraction).expand(masked.shape)


def examples(n: int) -> Examples:
    x0 = torch.tensor(ANSWER).repeat(n, 1)
    prompt = torch.zeros_like(x0, dtype=torch.bool)
    prompt[:, PROMPT] = True
    return Examples(x0, prompt)


def rule_loss(masked: set[int]) -> float:
    """Mean −log p(answer) over ``masked`` under the left-neighbour rule, in plain Python."""
    p = [P_SHUT if i - 1 in masked else P_OPEN for i in sorted(masked)]
    return sum(-math.log(q) for q in p) / len(p)


def greedy_decoder_masks() -> list[set[int]]:
    """The margin decoder's states with k = 1: reveal the most confident masked position
    (P_OPEN beats P_SHUT; ties to the lower index) until none is left."""
    masked = {i for i in range(len(ANSWER)) if i not in PROMPT}
    states = []
    while masked:
        states.append(set(masked))
        confidence = {i: (P_SHUT if i - 1 in masked else P_OPEN) for i in masked}
        masked.remove(min(masked, key=lambda i: (-confidence[i], i)))
    return states


def test_crafted_model_losses_on_decoder_and_random_masks():
    free = [i for i in range(len(ANSWER)) if i not in PROMPT]
    l_eff = len(free)
    result = measure_mismatch(LeftNeighbour(), examples(40), MASK, bins=l_eff, draws=25, seed=3)
    summary = result.summary()
    expected_states = greedy_decoder_masks()
    assert len(expected_states) == l_eff  # k = 1: one state per masked count
    for row, masked in zip(summary["bins"], expected_states, strict=True):
        n = len(masked)
        # bins = L_eff: bin j holds exactly the state with j positions unmasked
        assert row["bin"] == l_eff - n and row["states"] == 40 and row["examples"] == 40
        decoder = row["decoder_masks"]
        assert decoder["mean"] == pytest.approx(rule_loss(masked), abs=1e-6)
        assert decoder["se"] == pytest.approx(0.0, abs=1e-9)  # identical examples
        # its own tokens are the answer, so its states are the decoder masks
        assert row["decoder_states"]["mean"] == pytest.approx(decoder["mean"], abs=1e-6)
        exact = np.mean([rule_loss(set(c)) for c in combinations(free, n)])
        random = row["random_masks"]
        assert abs(random["mean"] - exact) <= max(4 * (random["se"] or 0.0), 1e-6)
        assert row["gap"]["mean"] == pytest.approx(decoder["mean"] - random["mean"], abs=1e-6)
    # the decoder sweeps left to right, keeping runs of masks long: harder than random masks
    middle = summary["bins"][2]
    assert middle["gap"]["mean"] > 4 * middle["gap"]["se"] > 0
    # overall: each example's states averaged, then over examples
    expected_overall = np.mean([rule_loss(m) for m in expected_states])
    assert summary["overall"]["decoder_masks"]["mean"] == pytest.approx(expected_overall, 1e-6)
    assert summary["overall"]["states"] == 40 * l_eff


def test_stage_bins_group_states_by_fraction_unmasked():
    l_eff = len(ANSWER) - len(PROMPT)
    result = measure_mismatch(LeftNeighbour(), examples(3), MASK, bins=4, draws=1)
    rows = result.summary()["bins"]
    masks = greedy_decoder_masks()
    for j, row in enumerate(rows):
        members = [m for m in masks if 4 * (l_eff - len(m)) // l_eff == j]
        assert row["states"] == 3 * len(members)
        assert row["decoder_masks"]["mean"] == pytest.approx(
            np.mean([rule_loss(m) for m in members]), abs=1e-6
        )
    assert np.allclose(result.stage, np.tile([(l_eff - len(m)) / l_eff for m in masks], 3))


def test_losses_that_depend_only_on_the_count_show_no_gap():
    result = measure_mismatch(CountOnly(), examples(5), MASK, bins=3, draws=2)
    for row in [*result.summary()["bins"], result.summary()["overall"]]:
        assert row["gap"]["mean"] == pytest.approx(0.0, abs=1e-6)
        assert row["random_masks"]["mean"] == pytest.approx(row["decoder_masks"]["mean"], 1e-6)


def test_summary_averages_each_examples_states_then_pairs_the_gap():
    decoder = np.array([1.0, 3, 5, 2, 4, 6])
    result = Mismatch(
        example=np.array([0, 0, 0, 1, 1, 2]),
        stage=np.zeros(6),
        bin=np.array([0, 0, 1, 0, 1, 0]),
        losses={
            "decoder_masks": decoder,
            "random_masks": np.array([0.0, 2, 1, 1, 1, 3]),
            "decoder_states": decoder + 1,
        },
        bins=2,
        tokens=torch.zeros(3, 1),
    )
    summary = result.summary()

    def stat(per_example: list[float]) -> dict:
        x = np.array(per_example)
        return {"mean": pytest.approx(x.mean()), "se": pytest.approx(x.std(ddof=1) / len(x) ** 0.5)}

    # per-example means worked out by hand: bin 0 holds example 0's states 1 and 3, …
    first, second = summary["bins"]
    assert (first["examples"], first["states"], second["examples"], second["states"]) == (
        3,
        4,
        2,
        2,
    )
    assert first["decoder_masks"] == stat([2, 2, 6])
    assert first["random_masks"] == stat([1, 1, 3])
    assert first["gap"] == stat([1, 1, 3])
    assert first["decoder_states"] == stat([3, 3, 7])
    assert second["gap"] == stat([4, 3])
    assert second["stage"] == [0.5, 1.0]
    assert summary["overall"]["decoder_masks"] == stat([3, 3, 6])
    assert summary["overall"]["gap"] == stat([2, 2, 3])


class Recorder(torch.nn.Module):
    """Wraps a model and keeps every input it is called with."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.inputs.append(ids.clone())
        return self.model(ids)


@pytest.mark.parametrize("decoding", [{"k": 2}, {"k": None, "threshold": 0.3}])
def test_decoder_states_are_the_samplers_inputs_and_losses_match(decoding):
    torch.manual_seed(0)
    vocab, mask = 4, 4
    net = Transformer(ModelConfig(vocab_size=vocab, seq_len=9, dim=16, n_layers=1, n_heads=2))
    net.eval()
    x0 = torch.randint(0, vocab, (5, 9))
    prompt = torch.rand(5, 9) < 0.3
    prompt[1] = True  # a row with nothing to decode
    prompt[2, 0] = False
    data = Examples(x0, prompt)
    recorder = Recorder(net)
    out = sample(recorder, x0.masked_fill(~prompt, mask), mask, record_order=True, **decoding)
    states = decoder_states(out.order)
    for step, seen in enumerate(recorder.inputs):
        rows = states.example[states.step == step]
        rebuilt = out.tokens[rows].masked_fill(states.masked[states.step == step], mask)
        assert torch.equal(rebuilt, seen)
    assert len(states.example) == sum(len(seen) for seen in recorder.inputs)

    result = measure_mismatch(net, data, mask, batch_size=3, **decoding)
    assert torch.equal(result.tokens, out.tokens)
    # losses computed here from the recorded inputs, state by state (example-major)
    last_step = out.order.amax(1)
    expected_states, expected_masks = [], []
    for b in range(len(x0)):
        for step in range(int(last_step[b]) + 1):
            seen = recorder.inputs[step][int((last_step[:b] >= step).sum())]  # b's row
            masked = seen == mask
            truth = x0[b].masked_fill(masked, mask)
            for x_t, target in ((seen, expected_states), (truth, expected_masks)):
                log_p = net(x_t[None])[0].detach().log_softmax(-1)
                target.append(float(-log_p[masked, x0[b][masked]].mean()))
    assert np.allclose(result.losses["decoder_states"], expected_states, atol=1e-5)
    assert np.allclose(result.losses["decoder_masks"], expected_masks, atol=1e-5)
    assert not np.allclose(expected_states, expected_masks)  # a random net makes mistakes


def test_bad_settings_are_refused():
    with pytest.raises(PumaError, match="bins"):
        measure_mismatch(LeftNeighbour(), examples(2), MASK, bins=0)
    with pytest.raises(PumaError, match="policy"):
        measure_mismatch(LeftNeighbour(), examples(2), MASK, policy="best")
    with pytest.raises(PumaError, match="no examples"):
        measure_mismatch(LeftNeighbour(), examples(0), MASK)


def test_cli_writes_json_and_png_on_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "mm.json"
    args = ["analyze", "mismatch", "--n", "3", "--bins", "3", "--draws", "1", "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert (report["task"], report["policy"], report["k"], report["n"]) == (
        "sudoku",
        "margin",
        1,
        3,
    )
    assert len(report["bins"]) == 3
    assert sum(r["states"] for r in report["bins"]) == report["overall"]["states"]
    assert report["overall"]["states"] == pytest.approx(3 * report["mean_steps"])
    assert (tmp_path / "mm.png").stat().st_size > 0
    assert "decoder masks" in capsys.readouterr().out
    assert main([*args, "--bins", "0"]) == 2
    assert main([*args, "--task", "sort"]) == 2

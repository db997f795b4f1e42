import pytest
import torch

from puma_mdm import sample
from puma_mdm.model import ModelConfig, Transformer

V, L, S = 6, 16, 4
MASK = V


class Recorder(torch.nn.Module):
    """Wraps a model (of the same kind) and keeps every input it was called with; the tests
    decode it with ``cache="none"``, whose inputs are whole prefixes."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model, self.cfg, self.inputs = model, model.cfg, []
        self.kind = model.kind

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.inputs.append(ids.clone())
        return self.model(ids)


def block_model(**kw) -> Transformer:
    return Transformer(
        ModelConfig(vocab_size=V, seq_len=L, dim=32, n_layers=1, n_heads=2, **kw)
    ).eval()


def prompted(rows=3, prompt=6, seed=0):
    x = torch.randint(0, V, (rows, L), generator=torch.Generator().manual_seed(seed))
    pm = torch.zeros(rows, L, dtype=torch.bool)
    pm[:, :prompt] = True
    return x.masked_fill(~pm, MASK), pm


@pytest.mark.parametrize(
    "options",
    [{"policy": "margin", "k": 1}, {"policy": "top_prob", "k": 3}, {"threshold": 0.3}],
)
def test_blocks_decode_left_to_right_without_touching_the_past(options):
    model = Recorder(block_model(block_size=S))
    x, pm = prompted()
    result = sample(model, x, MASK, record_order=True, cache="none", **options)
    out = result.tokens
    assert (out != MASK).all() and torch.equal(out[pm], x[pm])
    for ids in model.inputs:
        end = ids.shape[1]
        assert end % S == 0 and end <= L
        # the prefix before the current block is already final (rows may be a subset)
        final = out[:, : end - S]
        assert all(bool((final == row).all(1).any()) for row in ids[:, : end - S])
        assert not (ids[:, : end - S] == MASK).any()
    order = result.order.masked_fill(pm, -1)
    for start in range(S, L, S):  # every position of a block is decoded after the block before
        before = order[:, :start].amax(1)
        after = order[:, start:].masked_fill(pm[:, start:], 10**6).amin(1)
        assert (before < after).all()
    assert result.nfe == len(model.inputs)


def test_each_block_sees_the_same_logits_as_a_one_shot_prefix():
    """Sampling block n with the prefix only equals running the model on the full sequence:
    later (masked) blocks are invisible under block-causal attention."""
    model = block_model(block_size=S)
    x, _ = prompted(rows=2)
    full = model(x)
    torch.testing.assert_close(model(x[:, : 2 * S]), full[:, : 2 * S], rtol=1e-5, atol=1e-6)


class AlwaysEos(torch.nn.Module):
    """A block model (cfg only) whose logits favour id ``eos`` everywhere."""

    kind = "block"

    def __init__(self, eos: int) -> None:
        super().__init__()
        self.cfg, self.eos = ModelConfig(vocab_size=V, seq_len=L, block_size=S), eos

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*ids.shape, V)
        logits[..., self.eos] = 5.0
        return logits


def test_eos_stops_a_row_and_pads_it():
    eos = 5
    model = AlwaysEos(eos)
    x, pm = prompted(prompt=6)
    recorder = Recorder(model)
    result = sample(recorder, x, MASK, policy="margin", k=1, eos_id=eos, cache="none")
    assert (result.tokens[~pm] == eos).all()
    # only the block holding the first generated position needs decoding: 2 positions, k=1
    assert result.nfe == 2 and all(ids.shape[1] == 2 * S for ids in recorder.inputs)
    no_stop = sample(model, x, MASK, policy="margin", k=1, cache="none")
    assert no_stop.nfe == L - 6 and torch.equal(no_stop.tokens, result.tokens)


def test_causal_model_samples_token_by_token():
    model = Recorder(block_model(causal=True, shift=True))
    x, pm = prompted(prompt=5)
    result = sample(model, x, MASK, temperature=1.0, record_order=True, cache="none")
    assert result.nfe == L - 5
    assert torch.equal(result.order[0, 5:], torch.arange(L - 5))
    assert [ids.shape[1] for ids in model.inputs] == list(range(6, L + 1))
    assert torch.equal(result.tokens[pm], x[pm])

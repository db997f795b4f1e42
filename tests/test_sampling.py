import pytest
import torch

from conftest import FixedScores
from puma_mdm import sample
from puma_mdm.masking.base import pick_top
from puma_mdm.model import ModelConfig, Transformer
from puma_mdm.sampling import POLICIES, choose_values

V, MASK = 5, 5


def logits_with(probs_rows: list[list[list[float]]]) -> torch.Tensor:
    return torch.tensor(probs_rows).log()


def test_each_policy_picks_its_position_on_crafted_logits():
    # position 0: confident but close second; 1: peaked; 2: flat; 3: top-1 high, others split
    probs = [
        [0.50, 0.45, 0.03, 0.01, 0.01],
        [0.40, 0.15, 0.15, 0.15, 0.15],
        [0.20, 0.20, 0.20, 0.20, 0.20],
        [0.45, 0.10, 0.15, 0.15, 0.15],
    ]
    logits = logits_with([probs])
    x = torch.full((1, 4), MASK)
    first = {}
    for policy in ("top_prob", "margin", "entropy"):
        result = sample(FixedScores(logits), x, MASK, policy=policy, k=1, record_order=True)
        first[policy] = int((result.order[0] == 0).nonzero())
    assert first["top_prob"] == 0  # highest max-probability 0.50
    assert first["margin"] == 3  # 0.45 − 0.15 = 0.30 beats 0.05, 0.25, 0
    entropies = -(torch.tensor(probs) * torch.tensor(probs).log()).sum(-1)
    assert first["entropy"] == int(entropies.argmin())


def test_random_policy_order_depends_on_generator_only():
    logits = torch.randn(3, 10, V)
    x = torch.full((3, 10), MASK)

    def order(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return sample(
            FixedScores(logits), x, MASK, "random", generator=gen, record_order=True
        ).order

    assert torch.equal(order(1), order(1)) and not torch.equal(order(1), order(2))


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_per_step_fills_everything_and_keeps_the_prompt(policy, k):
    model = Transformer(ModelConfig(vocab_size=V, seq_len=12, dim=32, n_layers=1, n_heads=2))
    x = torch.randint(0, V, (4, 12))
    prompt = torch.zeros(4, 12, dtype=torch.bool)
    prompt[:, :4] = True
    x[~prompt] = MASK
    result = sample(model, x, MASK, policy=policy, k=k, record_order=True)
    assert (result.tokens != MASK).all()
    assert torch.equal(result.tokens[prompt], x[prompt])
    assert result.nfe == -(-8 // k)
    assert (result.order[prompt] == -1).all()
    per_step = torch.stack([(result.order == s).sum(1) for s in range(result.nfe)], 1)
    assert (per_step[:, :-1] == k).all()


def test_threshold_reveals_at_least_one_and_all_confident_ones():
    logits = torch.zeros(2, 6, V)
    logits[0, :3, 1] = 20.0  # three near-certain positions in row 0
    x = torch.full((2, 6), MASK)
    result = sample(FixedScores(logits), x, MASK, "margin", threshold=0.9, record_order=True)
    assert (result.order[0, :3] == 0).all()
    assert ((result.order[1] >= 0).sum() == 6) and (result.tokens != MASK).all()
    steps_row1 = result.order[1].sort().values
    assert torch.equal(steps_row1, torch.arange(6))  # flat row: exactly one per step


def test_steps_schedule_uses_the_given_number_of_calls():
    model = FixedScores(torch.randn(2, 10, V))
    result = sample(model, torch.full((2, 10), MASK), MASK, "top_prob", steps=3)
    assert result.nfe == 3 and model.calls == 3


def test_temperature_sampling_matches_the_distribution():
    log_probs = torch.tensor([0.7, 0.2, 0.1]).log().expand(20000, 1, 3)
    draws = choose_values(log_probs, 1.0, torch.Generator().manual_seed(0)).flatten()
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.015, rtol=0)
    cold = choose_values(log_probs, 0.05, torch.Generator().manual_seed(0)).flatten()
    assert (cold == 0).float().mean() > 0.99


@torch.no_grad()
def reference_loop(model, x, policy, k):
    """Per-row, per-position reference decoder written independently of ``sample``."""
    out = x.clone()
    for b in range(len(x)):
        row = out[b : b + 1].clone()
        while (row == MASK).any():
            log_probs = model(row).float().log_softmax(-1)[0]
            probs = log_probs.exp()
            masked = [i for i in range(row.shape[1]) if row[0, i] == MASK]
            if policy == "top_prob":
                score = {i: float(probs[i].max()) for i in masked}
            elif policy == "margin":
                score = {
                    i: float(probs[i].topk(2).values[0] - probs[i].topk(2).values[1])
                    for i in masked
                }
            else:
                score = {i: float((probs[i] * log_probs[i]).sum()) for i in masked}
            chosen = sorted(masked, key=lambda i: (-score[i], i))[:k]
            for i in chosen:
                row[0, i] = int(log_probs[i].argmax())
        out[b] = row[0]
    return out


@pytest.mark.parametrize("policy", ["top_prob", "margin", "entropy"])
@pytest.mark.parametrize("k", [1, 2])
def test_vectorised_sampler_equals_a_per_row_loop(policy, k):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=V, seq_len=10, dim=32, n_layers=2, n_heads=2))
    model.eval()
    x = torch.randint(0, V, (6, 10))
    x[:, 3:] = MASK
    x[2, 1] = MASK  # rows with different numbers of masks
    fast = sample(model, x, MASK, policy=policy, k=k).tokens
    assert torch.equal(fast, reference_loop(model, x, policy, k))


def test_pick_top_breaks_ties_by_lower_index():
    chosen = pick_top(torch.zeros(1, 5), torch.ones(1, 5, dtype=torch.bool), torch.tensor([2]))
    assert chosen.tolist() == [[True, True, False, False, False]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"policy": "best"}, "unknown policy 'best'"),
        ({"k": 0}, "k .* must be an integer ≥ 1"),
        ({"threshold": 1.5}, "threshold must be in"),
        ({"k": 2, "threshold": 0.5}, "at most one of"),
        ({"temperature": -1.0}, "temperature must be ≥ 0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(FixedScores(torch.zeros(1, 3, V)), torch.full((1, 3), MASK), MASK, **kwargs)


def test_mask_id_inside_the_model_vocabulary_is_refused():
    with pytest.raises(ValueError, match="mask id 2 is inside the model's vocabulary of 5"):
        sample(FixedScores(torch.zeros(1, 3, V)), torch.full((1, 3), 2), 2)

"""MDM-Prime losses and the honesty note (docs/algorithms.md §6), on an enumerable toy.

The toy: sequences of L = 2 tokens over C = 5 classes with a known distribution. Every digit
mask of every sequence is enumerated with its probability under the count form (n ~ U{1..N}
digits, then a uniform n-subset), so each objective is computed *exactly*, through the
library's own ``prime_loss``. The exact posterior p(x_i | y) is computed by brute force."""

import itertools
import math

import pytest
import torch

from puma_mdm.losses import mdm_loss
from puma_mdm.masking import Batch, mask_count
from puma_mdm.model import ModelConfig, Transformer
from puma_mdm.prime.encoding import PrimeCodec
from puma_mdm.prime.evaluate import prime_nll_bound
from puma_mdm.prime.loss import prime_loss
from puma_mdm.prime.model import PrimeTransformer
from puma_mdm.prime.process import mask_digits
from puma_mdm.tasks.base import Examples

C, L = 5, 2


def toy_distribution(seed: int) -> dict[tuple[int, int], float]:
    """A sparse distribution over C^L sequences whose digits depend on each other."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(C**L, generator=gen, dtype=torch.float64) ** 3
    weights[torch.rand(C**L, generator=gen) < 0.5] = 0  # sparse: strong dependence
    weights /= weights.sum()
    return {
        seq: float(w)
        for seq, w in zip(itertools.product(range(C), repeat=L), weights, strict=True)
        if w > 0
    }


def entropy_per_token(dist) -> float:
    return -sum(p * math.log(p) for p in dist.values()) / L


class ExactPosterior(torch.nn.Module):
    """p(x_i | y) ∝ Σ over data sequences consistent with every revealed digit of y."""

    def __init__(self, dist, codec: PrimeCodec) -> None:
        super().__init__()
        self.dist, self.codec = dist, codec

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(y), L, C, dtype=torch.float64)
        for b, state in enumerate(y):
            for seq, p in self.dist.items():
                code = self.codec.encode(torch.tensor(seq))
                if ((state == self.codec.mask_digit) | (state == code)).all():
                    for i in range(L):
                        out[b, i, seq[i]] += p
        return (out / out.sum(-1, keepdim=True)).log()


class NearlyExact(ExactPosterior):
    """The exact posterior's log-probabilities plus noise that depends on the state only (so it
    is a model: the same input gives the same output)."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        exact = super().forward(y)
        noise = torch.stack(
            [
                torch.randn(
                    L,
                    C,
                    generator=torch.Generator().manual_seed(hash(tuple(s.flatten().tolist()))),
                    dtype=torch.float64,
                )
                for s in y
            ]
        )
        return exact + 0.5 * noise


def every_mask(dist, codec: PrimeCodec) -> Batch:
    """All (sequence, digit mask) pairs as one batch whose weights make ``prime_loss`` the exact
    expectation: weight = B · p(x0) · P(mask) · ℓ/n, P(mask) = (1/N) / binom(N, n)."""
    ell = codec.digits
    N = L * ell
    rows = []
    for seq, p in dist.items():
        code = codec.encode(torch.tensor(seq))
        for masked in itertools.product([False, True], repeat=N):
            n = sum(masked)
            if n:
                prob = p / N / math.comb(N, n)
                rows.append((seq, code, torch.tensor(masked).view(L, ell), prob * ell / n))
    x0 = torch.tensor([r[0] for r in rows])
    masked = torch.stack([r[2] for r in rows])
    x_t = torch.stack([r[1] for r in rows]).masked_fill(masked, codec.mask_digit)
    weights = torch.tensor([r[3] for r in rows]) * len(rows)
    return Batch(x0, x_t, torch.zeros(len(rows), L, dtype=torch.bool), masked, weights)


def exact(model, dist, codec, form) -> float:
    batch = every_mask(dist, codec)
    with torch.no_grad():
        return float(prime_loss(model(batch.x_t), batch, codec, form))


def test_twin_digits_by_hand():
    """Each token is 0 or 4 — digits (0,0) or (1,1) in base 3, a fair coin written twice —
    independently. Entropy log 2 per token. Count form over N = 4 digits, n ~ U{1..4}: a
    masked digit costs log 2 exactly when its twin is masked too, which (with weight 2/n)
    averages (0 + 2/3 + 4/3 + 2)/4 = 1, so the marginal bound is log 2 = H. The joint form
    charges log 2 once per fully masked token: (0 + 1/3 + 2/3 + 1)/4 = 1/2, i.e. H/2 < H."""
    dist = {(a, b): 0.25 for a in (0, 4) for b in (0, 4)}
    codec = PrimeCodec(C, 2)
    model = ExactPosterior(dist, codec)
    assert exact(model, dist, codec, "marginal") == pytest.approx(math.log(2), rel=1e-6)
    assert exact(model, dist, codec, "joint") == pytest.approx(math.log(2) / 2, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_marginal_bound_of_the_exact_posterior_is_the_entropy_and_the_joint_form_is_below(seed):
    dist = toy_distribution(seed)
    H = entropy_per_token(dist)
    codec = PrimeCodec(C, 2)  # base 3: 9 codes, 4 unused
    model = ExactPosterior(dist, codec)
    assert exact(model, dist, codec, "marginal") == pytest.approx(H, rel=1e-5)
    # the published (joint) form is no upper bound: here it reports less than the entropy
    assert exact(model, dist, codec, "joint") < H - 0.02


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_with_one_digit_both_forms_are_the_mdm_bound(seed):
    dist = toy_distribution(seed)
    codec = PrimeCodec(C, 1)
    model = ExactPosterior(dist, codec)
    H = entropy_per_token(dist)
    assert exact(model, dist, codec, "marginal") == pytest.approx(H, rel=1e-5)
    assert exact(model, dist, codec, "joint") == pytest.approx(H, rel=1e-5)


@pytest.mark.parametrize("digits", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_marginal_bound_of_random_models_is_at_least_the_entropy(digits, seed):
    dist = toy_distribution(seed % 3)
    H = entropy_per_token(dist)
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=C, seq_len=L, dim=12, n_layers=1, n_heads=2, prime_digits=digits)
    model = PrimeTransformer(cfg)
    for p in model.parameters():  # far from uniform predictions
        p.data.normal_(0, 1.0)
    assert exact(model, dist, model.codec, "marginal") >= H


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_marginal_bound_of_a_nearly_exact_model_is_just_above_the_entropy(seed):
    dist = toy_distribution(seed)
    H = entropy_per_token(dist)
    codec = PrimeCodec(C, 2)
    bound = exact(NearlyExact(dist, codec), dist, codec, "marginal")
    assert H < bound < H + 0.3


def test_the_sampled_bound_estimates_the_exact_one():
    dist = toy_distribution(0)
    cfg = ModelConfig(vocab_size=C, seq_len=L, dim=12, n_layers=1, n_heads=2, prime_digits=2)
    model = PrimeTransformer(cfg)
    for p in model.parameters():
        p.data.normal_(0, 0.5)
    target = exact(model, dist, model.codec, "marginal")
    seqs, probs = zip(*dist.items(), strict=True)
    gen = torch.Generator().manual_seed(0)
    picks = torch.multinomial(torch.tensor(probs), 6000, replacement=True, generator=gen)
    x0 = torch.tensor(seqs)[picks]
    estimate = prime_nll_bound(model, Examples(x0, torch.zeros_like(x0, dtype=torch.bool)))
    assert estimate["nll"] == pytest.approx(target, rel=0.05)


def test_with_one_digit_the_losses_equal_the_mdm_loss_exactly():
    cfg = dict(vocab_size=10, seq_len=12, dim=32, n_layers=2, n_heads=2)
    torch.manual_seed(0)
    plain = Transformer(ModelConfig(**cfg))
    torch.manual_seed(0)
    prime = PrimeTransformer(ModelConfig(**cfg, prime_digits=1))
    assert all(
        torch.equal(a, b)
        for a, b in zip(plain.state_dict().values(), prime.state_dict().values(), strict=True)
    )
    x0 = torch.randint(0, 10, (16, 12))
    prompt = torch.zeros_like(x0, dtype=torch.bool)
    prompt[:, :3] = True
    tokens = mask_count(x0, prompt, 10, torch.Generator().manual_seed(1))
    digits = mask_digits(x0, prompt, prime.codec, torch.Generator().manual_seed(1))
    assert torch.equal(digits.masked.squeeze(-1), tokens.masked)
    assert torch.equal(digits.weights, tokens.weights)
    expected = mdm_loss(plain(tokens.x_t), tokens)
    logits = prime(digits.x_t)
    for form in ("joint", "marginal"):
        assert torch.equal(prime_loss(logits, digits, prime.codec, form), expected)


def test_each_form_on_one_hand_checked_state():
    """Token 0 has one masked digit, token 1 both, token 2 none."""
    codec = PrimeCodec(10, 2)
    x0 = torch.tensor([[3, 7, 9]])
    masked = torch.tensor([[[True, False], [True, True], [False, False]]])
    x_t = codec.encode(x0).masked_fill(masked, codec.mask_digit)
    batch = Batch(x0, x_t, torch.zeros(1, 3, dtype=torch.bool), masked, torch.ones(1))
    logits = codec.carry_over(torch.randn(1, 3, 10, dtype=torch.float64), x_t)
    p = logits.softmax(-1)[0]
    # token 0 = 3 = (0, 3): revealed digit 3 leaves classes 3 and 7; its masked digit is 0
    p0 = p[0, 3] / (p[0, 3] + p[0, 7])
    # token 1 = 7 = (1, 3): digit 0 is 1 for classes 4..7, digit 1 is 3 for classes 3 and 7
    p1_joint, p1_lead, p1_last = p[1, 7], p[1, 4:8].sum(), p[1, 3] + p[1, 7]
    joint = -(p0.log() + p1_joint.log())
    marginal = -(p0.log() + p1_lead.log() + p1_last.log())
    assert float(prime_loss(logits, batch, codec, "joint")) == pytest.approx(float(joint), rel=1e-5)
    assert float(prime_loss(logits, batch, codec, "marginal")) == pytest.approx(
        float(marginal), rel=1e-5
    )

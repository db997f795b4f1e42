"""MDM-Prime codec: round trip, integer base, unused codes, carry-over and digit marginals,
each checked against an independent brute force over all digit strings."""

import itertools

import pytest
import torch

from puma_mdm.errors import ConfigError
from puma_mdm.prime.encoding import PrimeCodec, integer_base

SHAPES = [
    (c, ell) for c in (2, 3, 5, 10, 11, 16, 17, 100, 255, 256, 257, 1000) for ell in range(1, 6)
]


def horner(digits, base: int) -> int:
    value = 0
    for d in digits:
        value = value * base + d
    return value


@pytest.mark.parametrize("classes, digits", SHAPES)
def test_every_id_round_trips_and_unused_codes_are_counted(classes, digits):
    codec = PrimeCodec(classes, digits)
    b = codec.base
    assert b**digits >= classes and (b == 2 or (b - 1) ** digits < classes)  # the smallest base
    ids = torch.arange(classes)
    code = codec.encode(ids)
    assert code.shape == (classes, digits)
    assert ((code >= 0) & (code < b)).all()
    assert torch.equal(codec.decode(code), ids)
    # most significant digit first, as written by hand
    assert [horner(row, b) for row in code.tolist()] == ids.tolist()
    used = {tuple(row) for row in code.tolist()}
    assert len(used) == classes
    if b**digits <= 5000:  # enumerate every digit string
        all_codes = set(itertools.product(range(b), repeat=digits))
        assert len(all_codes - used) == codec.unused_codes == b**digits - classes


@pytest.mark.parametrize(
    "classes, digits, base",
    [
        (10**12, 3, 10**4),
        (10**12 + 1, 3, 10**4 + 1),
        (2**40, 4, 2**10),
        (2**40 + 1, 4, 2**10 + 1),
        (3**20, 20, 3),
        (10, 2, 4),
        (256, 8, 2),
        (257, 8, 3),
    ],
)
def test_base_is_exact_where_floating_point_roots_are_not(classes, digits, base):
    assert integer_base(classes, digits) == base
    codec = PrimeCodec(classes, digits)
    ids = torch.tensor([0, 1, classes // 3, classes - 2, classes - 1])
    assert torch.equal(codec.decode(codec.encode(ids)), ids)


def test_bad_shapes_are_refused():
    with pytest.raises(ConfigError, match="≥ 2 classes"):
        PrimeCodec(1, 2)
    with pytest.raises(ConfigError, match="≥ 1 digit"):
        PrimeCodec(10, 0)
    with pytest.raises(ConfigError, match="overflow"):
        PrimeCodec(2**63, 1)


def all_states(codec):
    """Every digit state of one token: each digit revealed (0..b−1) or masked (b)."""
    return torch.tensor(list(itertools.product(range(codec.base + 1), repeat=codec.digits)))


@pytest.mark.parametrize("classes, digits", [(10, 2), (5, 2), (7, 3), (27, 3), (16, 4), (6, 1)])
def test_carry_over_equals_a_brute_force_consistency_check(classes, digits):
    codec = PrimeCodec(classes, digits)
    b = codec.base
    states = all_states(codec)
    brute = torch.zeros(len(states), classes, dtype=torch.bool)
    for s, state in enumerate(states.tolist()):
        for full in itertools.product(range(b), repeat=digits):
            agrees = all(y in (b, d) for y, d in zip(state, full, strict=True))
            if agrees and horner(full, b) < classes:
                brute[s, horner(full, b)] = True
    assert torch.equal(codec.consistent(states), brute)
    logits = torch.randn(len(states), classes)
    filtered = codec.carry_over(logits, states)
    assert torch.equal(filtered[brute], logits[brute])
    assert (filtered[~brute] == float("-inf")).all()


@pytest.mark.parametrize("classes, digits", [(10, 2), (7, 3), (16, 4), (6, 1)])
def test_digit_marginals_sum_the_token_distribution(classes, digits):
    codec = PrimeCodec(classes, digits)
    log_probs = (3 * torch.randn(4, classes, dtype=torch.float64)).log_softmax(-1)
    marginals = codec.digit_log_marginals(log_probs)
    assert marginals.shape == (4, digits, codec.base)
    code = codec.encode(torch.arange(classes)).tolist()
    for j in range(digits):
        for v in range(codec.base):
            members = [x for x in range(classes) if code[x][j] == v]
            expected = log_probs[:, members].exp().sum(-1)
            assert torch.allclose(marginals[:, j, v].exp(), expected, atol=1e-12)
    assert torch.allclose(marginals.exp().sum(-1), torch.ones(4, digits, dtype=torch.float64))

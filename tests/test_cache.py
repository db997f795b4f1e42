"""Key-value caching in the sampler: exact for block-causal and causal models (same tokens, same
order, same network calls as without it), approximate (dual) for bidirectional ones."""

import pytest
import torch

from puma_mdm import sample
from puma_mdm.model import ModelConfig, Transformer

V, L = 7, 16
MASK = V


def peaked(**kw) -> Transformer:
    """A random fp32 model with confident, well-separated outputs (no argmax near-ties)."""
    torch.manual_seed(kw.pop("seed", 0))
    model = Transformer(
        ModelConfig(vocab_size=V, seq_len=L, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, **kw)
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.4)
    return model


def prompts(rows: int = 5, seed: int = 0) -> torch.Tensor:
    """Rows with prompts of different lengths (some ending inside a block)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (rows, L), generator=g)
    length = torch.randint(1, L // 2, (rows, 1), generator=g)
    return x.masked_fill(torch.arange(L) >= length, MASK)


class TokenCounter:
    """Counts the positions the model forwards (hook on the token embedding)."""

    def __init__(self, model: Transformer) -> None:
        self.tokens = 0
        model.embed.register_forward_hook(self.count)

    def count(self, module, args, out) -> None:
        self.tokens += args[0].numel()


DECODERS = [
    {"policy": "margin", "k": 1},
    {"policy": "top_prob", "k": 3},
    {"policy": "entropy", "threshold": 0.5},
    {"policy": "margin", "entropy_bound": 0.5},
    {"policy": "margin", "entropy_sum": 0.5},
    {"policy": "random", "k": 2},
    {"policy": "margin", "k": 1, "temperature": 1.0},
]


@pytest.mark.parametrize("options", DECODERS)
@pytest.mark.parametrize(
    "kind", [{"block_size": 4}, {"causal": True, "shift": True}, {"causal": True}]
)
def test_prefix_cache_gives_the_uncached_decoding(kind, options):
    model = peaked(**kind)
    x = prompts()
    runs = {
        cache: sample(
            model,
            x,
            MASK,
            cache=cache,
            record_order=True,
            generator=torch.Generator().manual_seed(3),
            **options,
        )
        for cache in ("none", "prefix")
    }
    assert torch.equal(runs["none"].tokens, runs["prefix"].tokens)
    assert torch.equal(runs["none"].order, runs["prefix"].order)
    assert runs["none"].nfe == runs["prefix"].nfe
    assert not (runs["prefix"].tokens == MASK).any()


def test_auto_cache_is_the_prefix_cache_for_block_and_causal_models():
    for kind in ({"block_size": 4}, {"causal": True, "shift": True}):
        model = peaked(**kind)
        counter = TokenCounter(model)
        sample(model, prompts(), MASK, cache="none")
        uncached, counter.tokens = counter.tokens, 0
        sample(model, prompts(), MASK)
        assert counter.tokens < uncached / 2


def test_an_arm_forwards_one_token_per_step_with_the_cache():
    model = peaked(causal=True, shift=True)
    x = torch.full((3, L), MASK)
    x[:, :4] = torch.tensor([1, 2, 3, 4])
    counter = TokenCounter(model)
    result = sample(model, x, MASK, cache="prefix")
    # the first call encodes the prompt; each later one forwards one new token per row
    assert result.nfe == L - 4
    assert counter.tokens == 3 * (4 + (L - 5))


def test_prefix_cache_with_eos_and_blocks_decoded_two_at_a_time():
    model = peaked(block_size=4)
    x = prompts(rows=6, seed=1)
    for block_size in (4, 8):
        a, b = (
            sample(model, x, MASK, block_size=block_size, eos_id=2, cache=c, record_order=True)
            for c in ("none", "prefix")
        )
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.order, b.order)


def test_prefix_cache_logits_match_a_full_forward():
    from puma_mdm.sampling import PrefixCache

    model = peaked(block_size=4)
    x = prompts(rows=3)
    x[:, :8] = x[:, :8].masked_fill(x[:, :8] == MASK, 1)
    step = PrefixCache(model, x).block(8, 12)
    with torch.no_grad():
        got = step(x[:, 8:12], torch.arange(3))
        want = model(x[:, :12])[:, 8:12]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_dual_cache_with_refresh_every_step_is_exact_and_otherwise_completes():
    model = peaked(seed=1)
    x = prompts(rows=4)
    exact = sample(model, x, MASK, cache="none", record_order=True)
    dual1 = sample(model, x, MASK, cache="dual", refresh=1, record_order=True)
    assert torch.equal(exact.tokens, dual1.tokens) and torch.equal(exact.order, dual1.order)
    counter = TokenCounter(model)
    dual = sample(model, x, MASK, cache="dual", refresh=4)
    given = x != MASK
    assert torch.equal(dual.tokens[given], x[given]) and not (dual.tokens == MASK).any()
    assert dual.nfe == exact.nfe
    assert counter.tokens < x.numel() * exact.nfe * 0.75  # windows, not whole rows


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ({}, {"cache": "prefix"}, "exact only"),
        ({"block_size": 4}, {"cache": "dual"}, "bidirectional"),
        ({"block_size": 4}, {"cache": "prefix", "block_size": 2}, "exact only"),
        ({}, {"cache": "fast"}, "unknown cache"),
        ({}, {"cache": "dual", "refresh": 0}, "refresh"),
        ({}, {"entropy_bound": -1.0}, "entropy_bound"),
        ({}, {"entropy_bound": 1.0, "k": 2}, "at most one"),
        ({}, {"entropy_sum": float("nan")}, "entropy_sum"),
        ({}, {"entropy_sum": 1.0, "entropy_bound": 1.0}, "at most one"),
    ],
)
def test_bad_cache_and_rule_options_are_refused(kind, options, message):
    with pytest.raises(ValueError, match=message):
        sample(peaked(**kind), prompts(), MASK, **options)


def test_a_plain_function_cannot_use_a_cache():
    with pytest.raises(ValueError, match="puma Transformer"):
        sample(lambda ids: torch.zeros(*ids.shape, V), prompts(), MASK, cache="dual")


@pytest.mark.parametrize("spare_largest", [True, False])
@pytest.mark.parametrize("gamma", [0.0, 0.2, 1.0, 5.0])
def test_entropy_rules_reveal_the_longest_prefix_within_the_bound(gamma, spare_largest):
    from puma_mdm.sampling import POLICIES, entropy_bounded

    g = torch.Generator().manual_seed(int(gamma * 10))
    log_probs = (3 * torch.randn(6, 9, V, generator=g)).log_softmax(-1)
    eligible = torch.rand(6, 9, generator=g) < 0.7
    eligible[:, 0] = True
    scores = POLICIES["margin"](log_probs, None)
    got = entropy_bounded(log_probs, scores, eligible, gamma, spare_largest)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    for b in range(6):
        ranked = sorted(eligible[b].nonzero().flatten().tolist(), key=lambda i: -scores[b, i])
        chosen = ranked[:1]
        for i in ranked[1:]:
            h = [float(entropy[b, j]) for j in [*chosen, i]]
            if sum(h) - (max(h) if spare_largest else 0.0) > gamma:
                break
            chosen.append(i)
        assert sorted(got[b].nonzero().flatten().tolist()) == sorted(chosen)


def test_only_the_entropy_sum_refuses_an_uncertain_position_beside_a_sure_one():
    """The EB-sampler spares the largest entropy, so a near-certain position lets a coin flip
    ride along in the same step; the entropy sum does not."""
    from puma_mdm.sampling import POLICIES, entropy_bounded

    probs = torch.tensor([[[1.0 - 1e-6, 1e-6, 0.0], [0.5, 0.5, 0.0], [0.4, 0.3, 0.3]]])
    log_probs = probs.clamp_min(1e-30).log()
    eligible = torch.ones(1, 3, dtype=torch.bool)
    scores = POLICIES["margin"](log_probs, None)
    eb = entropy_bounded(log_probs, scores, eligible, 0.01)
    total = entropy_bounded(log_probs, scores, eligible, 0.01, spare_largest=False)
    assert eb.tolist() == [[True, False, True]]  # the sure one and a 0.4/0.3/0.3 guess
    assert total.tolist() == [[True, False, False]]


@pytest.mark.parametrize(
    "options",
    [{"k": 1}, {"k": 3}, {"entropy_sum": 0.3}, {"threshold": 0.6}, {"entropy_bound": 0.3}],
)
@pytest.mark.parametrize("kind", [{}, {"block_size": 4}])
def test_row_nfe_is_what_decoding_each_row_alone_costs(kind, options):
    model = peaked(**kind)
    x = prompts(rows=6)
    batch = sample(model, x, MASK, **options)
    alone = [sample(model, x[b : b + 1], MASK, **options) for b in range(len(x))]
    assert batch.row_nfe.tolist() == [r.nfe for r in alone]
    slowest = max(r.nfe for r in alone)  # blocks: each block waits for its slowest row
    assert batch.nfe == slowest if not kind else batch.nfe >= slowest
    torch.testing.assert_close(batch.tokens, torch.cat([r.tokens for r in alone]))


def test_cached_step_functions_take_every_row_as_a_slice():
    """The GPU's fixed-length loop passes ``slice(None)`` for the rows."""
    from puma_mdm.sampling import DualCache, PrefixCache

    model = peaked(block_size=4)
    x = prompts(rows=3)
    x[:, :8] = x[:, :8].masked_fill(x[:, :8] == MASK, 1)
    rows = torch.arange(3)
    with torch.no_grad():
        for first in (8, 12):  # a block's first call (it commits) and a later one
            a = PrefixCache(model, x).block(8, 12)
            b = PrefixCache(model, x).block(8, 12)
            if first == 12:
                a(x[:, 8:12], rows), b(x[:, 8:12], rows)
            torch.testing.assert_close(a(x[:, 8:12], slice(None)), b(x[:, 8:12], rows))
        bidirectional = peaked(seed=1)
        y = prompts(rows=3)
        a, b = DualCache(bidirectional, MASK, 2), DualCache(bidirectional, MASK, 2)
        for _ in range(2):  # a refresh, then a windowed call
            torch.testing.assert_close(a(y, slice(None)), b(y, rows))


def test_kv_cache_writes_in_place_and_views_leave_it_unchanged():
    from puma_mdm.model import KVCache

    model = peaked(block_size=4)
    x = prompts(rows=3).masked_fill(prompts(rows=3) == MASK, 1)
    cache = KVCache(len(model.blocks), L)
    with torch.no_grad():
        model.encode(x[:, :8], slice(0, 8), model.attention_mask(8), cache=cache)
        cache.commit(8)
        keys = cache.layers[0].keys.clone()
        for rows, length in ((None, 4), (torch.tensor([0, 2]), 8)):
            view = cache.view(rows, length, 4)
            ids = x[: 3 if rows is None else 2, :4]
            model.encode(ids, slice(length, length + 4), None, cache=view)
        assert torch.equal(cache.layers[0].keys[:, :, :8], keys[:, :, :8])
        assert cache.layers[0].keys.shape[2] == L  # one buffer, sized once
    with pytest.raises(ValueError, match="commit"):
        cache.commit(1)

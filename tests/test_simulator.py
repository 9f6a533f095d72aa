"""SimSampler against closed forms: the drifting logits, exact token frequencies (chi-square), raw behaviour
log-probs, hand-checked finish rules, weight-transfer delay on a fake clock and slept time on a fake sleep."""
from __future__ import annotations

import threading

import pytest
import torch

from benchmarks.simulator import SimSampler, sim_logprobs
from rlvr.rollout import Sampler, token_probs
from rlvr.types import SamplingParams

# chi-square critical values at upper tail 0.001, by degrees of freedom
CHI2_P001 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32, 8: 26.12, 9: 27.88, 10: 29.59,
             11: 31.26}
CHI2_11_P001 = CHI2_P001[11]


class FakeTime:
    """A clock that only moves when told to, and a sleep that records and advances it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic of observed counts [V] against probabilities [V] (all > 0)."""
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


def one_token_counts(sim: SimSampler, params: SamplingParams, rows: int = 20000, seed: int = 0) -> torch.Tensor:
    r = sim.generate([[1]], params, n=rows, seed=seed)
    assert r.completion_ids.shape == (rows, 1) and bool((r.lengths == 1).all())
    return torch.bincount(r.completion_ids[:, 0], minlength=sim.vocab_size).to(torch.float64)


# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------

def test_logits_closed_form():
    sim = SimSampler(vocab_size=7, drift=0.25, seed=3)
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(7, generator=gen, dtype=torch.float64)
    direction = torch.randn(7, generator=gen, dtype=torch.float64)
    for v in (0, 1, 4, 100):
        got = sim.logits(v)
        assert got.dtype == torch.float64 and got.shape == (7,)
        assert torch.equal(got, base + 0.25 * v * direction)
    assert torch.equal(sim.logits(0), base)
    assert not torch.equal(SimSampler(vocab_size=7, seed=4).logits(0), base)
    assert torch.equal(SimSampler(vocab_size=7, drift=0.0, seed=3).logits(9), base)     # no drift: one policy
    assert torch.allclose(sim_logprobs(sim.logits(2)), torch.log_softmax(base + 0.5 * direction, -1))


def test_protocol_and_initial_state():
    sim = SimSampler()
    assert isinstance(sim, Sampler)
    assert sim.version == 0 and sim.calls == 0 and sim.busy_s == 0.0


# ---------------------------------------------------------------------------------------------
# Determinism and the distribution
# ---------------------------------------------------------------------------------------------

def test_deterministic_in_args_and_rows_independent_of_n():
    sim = SimSampler(vocab_size=5, eos_id=1, seed=2)
    params = SamplingParams(max_new_tokens=12, logprobs=True)
    a = sim.generate([[1, 2], [3]], params, n=4, seed=9)
    b = SimSampler(vocab_size=5, eos_id=1, seed=2).generate([[1, 2], [3]], params, n=4, seed=9)
    for field in ("completion_ids", "lengths", "behavior_logprobs"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert a.texts == b.texts and a.finish_reasons == b.finish_reasons
    c = sim.generate([[1, 2], [3]], params, n=4, seed=10)
    assert a.texts != c.texts                                  # another seed, other draws
    # row (i, j) is the same whatever n is and whatever the prompts contain
    d = sim.generate([[7], [8, 8, 8]], params, n=2, seed=9)
    for i in range(2):
        for j in range(2):
            row_a, row_d = a.completion_ids[i * 4 + j], d.completion_ids[i * 2 + j]
            k = int(a.lengths[i * 4 + j])
            assert int(d.lengths[i * 2 + j]) == k and torch.equal(row_a[:k], row_d[:k])


def test_token_frequencies_match_softmax_of_the_version():
    sim = SimSampler(vocab_size=12, drift=0.5, seed=1)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=1)
    p0 = torch.softmax(sim.logits(0), -1)
    counts0 = one_token_counts(sim, params)
    assert chi_square(counts0, p0) < CHI2_11_P001
    sim.load_weights(4)
    p4 = torch.softmax(sim.logits(4), -1)
    counts4 = one_token_counts(sim, params)
    assert chi_square(counts4, p4) < CHI2_11_P001
    assert chi_square(counts4, p0) > 10 * CHI2_11_P001        # the drift moved the distribution: v=0's is rejected
    assert (p4 - p0).abs().max() > 0.05


def test_temperature_and_top_p_frequencies():
    sim = SimSampler(vocab_size=12, seed=5)
    params = SamplingParams(temperature=0.5, top_p=0.8, max_new_tokens=1)
    target = token_probs(sim.logits(0)[None], 0.5, 0.8)[0].to(torch.float64)
    kept = target > 0
    assert 1 < int(kept.sum()) < 12                            # the nucleus drops some tokens, keeps several
    counts = one_token_counts(sim, params, seed=3)
    assert float(counts[~kept].sum()) == 0.0                   # never outside the nucleus
    assert chi_square(counts[kept], target[kept]) < CHI2_P001[int(kept.sum()) - 1]


# ---------------------------------------------------------------------------------------------
# Behaviour log-probs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.6), (0.0, 1.0)])
def test_behavior_logprobs_are_raw_policy_logprobs(temperature, top_p):
    sim = SimSampler(vocab_size=6, eos_id=2, drift=0.3, seed=7)
    sim.load_weights(3)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=10, logprobs=True)
    r = sim.generate([[1], [2, 3]], params, n=8, seed=4)
    blp = r.behavior_logprobs
    assert blp is not None and blp.dtype == torch.float32 and blp.shape == r.completion_ids.shape
    expected = torch.log_softmax(sim.logits(3), -1)[r.completion_ids].to(torch.float32)
    mask = r.loss_mask
    assert torch.equal(blp[mask], expected[mask])
    assert bool((blp[~mask] == 0).all())
    off = sim.generate([[1], [2, 3]], SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=10),
                       n=8, seed=4)
    assert off.behavior_logprobs is None
    assert torch.equal(off.completion_ids, r.completion_ids)   # the flag does not change the sample


# ---------------------------------------------------------------------------------------------
# Finish rules, padding, texts
# ---------------------------------------------------------------------------------------------

def test_eos_lengths_padding_and_texts():
    eos = int(SimSampler(vocab_size=12, seed=0).logits(0).argsort()[-2])   # the second likeliest token (p ~ 0.16)
    sim = SimSampler(vocab_size=12, eos_id=eos, seed=0)
    M = 9
    r = sim.generate([[5], [6]], SamplingParams(max_new_tokens=M), n=30, seed=1)
    ids, lengths = r.completion_ids, r.lengths
    assert ids.shape == (60, int(lengths.max())) and r.prompt_ids == [[5]] * 30 + [[6]] * 30
    assert {"stop", "length"} == set(r.finish_reasons)
    assert bool((ids >= 10).any())                             # tokens 10, 11 exercise the "% 10" in texts
    for b in range(60):
        k, row = int(lengths[b]), ids[b].tolist()
        if r.finish_reasons[b] == "stop":
            assert row[k - 1] == eos and eos not in row[:k - 1]
            body = row[:k - 1]
        else:
            assert k == M and eos not in row
            body = row
        assert all(t == eos for t in row[k:])                  # padded with eos_id
        assert r.texts[b] == "".join(str(t % 10) for t in body)


def test_lengths_follow_the_geometric_law():
    """Tokens are i.i.d., so P(length) = (1 - q)^M and E[lengths] = (1 - (1 - q)^M) / q, q = P(EOS)."""
    sim = SimSampler(vocab_size=12, eos_id=7, drift=0.4, seed=0)
    sim.load_weights(2)
    q, M, rows = float(torch.softmax(sim.logits(2), -1)[7]), 6, 20000
    r = sim.generate([[1]], SamplingParams(max_new_tokens=M), n=rows, seed=5)
    p_length = (1 - q) ** M
    assert 0.05 < p_length < 0.95
    frac = r.finish_reasons.count("length") / rows
    assert abs(frac - p_length) < 4 * (p_length * (1 - p_length) / rows) ** 0.5
    mean = (1 - (1 - q) ** M) / q
    assert abs(float(r.lengths.double().mean()) - mean) < 4 * float(r.lengths.double().std()) / rows ** 0.5


def test_greedy_is_argmax_every_step():
    sim = SimSampler(vocab_size=12, seed=11)
    top, bottom = int(sim.logits(0).argmax()), int(sim.logits(0).argmin())
    params = SamplingParams(temperature=0.0, max_new_tokens=5, logprobs=True)
    ends = SimSampler(vocab_size=12, eos_id=top, seed=11).generate([[1], [2]], params, n=3, seed=0)
    assert ends.completion_ids.tolist() == [[top]] * 6
    assert ends.lengths.tolist() == [1] * 6 and ends.finish_reasons == ["stop"] * 6 and ends.texts == [""] * 6
    runs = SimSampler(vocab_size=12, eos_id=bottom, seed=11).generate([[1], [2]], params, n=3, seed=0)
    assert runs.completion_ids.tolist() == [[top] * 5] * 6
    assert runs.lengths.tolist() == [5] * 6 and runs.finish_reasons == ["length"] * 6
    assert runs.texts == [str(top % 10) * 5] * 6


# ---------------------------------------------------------------------------------------------
# Versions and the weight-transfer delay
# ---------------------------------------------------------------------------------------------

def test_weight_delay_on_a_fake_clock():
    ft = FakeTime()
    sim = SimSampler(weight_delay_s=2.0, clock=ft.clock, sleep=ft.sleep)
    sim.load_weights(1, weights={"ignored": True})
    assert sim.version == 0
    ft.now = 1.999
    assert sim.version == 0
    ft.now = 2.0
    assert sim.version == 1
    ft.now = 2.5
    sim.load_weights(2)
    ft.now = 3.0
    sim.load_weights(3)
    assert sim.version == 1
    ft.now = 4.6
    assert sim.version == 2
    ft.now = 5.0
    assert sim.version == 3
    sim.load_weights(3)                                        # the newest again: nothing changes
    assert sim.version == 3
    with pytest.raises(ValueError, match=r"version 2 after version 3"):
        sim.load_weights(2)
    sim.load_weights(9)
    with pytest.raises(ValueError, match=r"version 4 after version 9"):   # older than the newest *loaded*
        sim.load_weights(4)
    assert sim.version == 3


def test_no_delay_is_visible_at_once_and_setter():
    sim = SimSampler()
    sim.load_weights(2)
    assert sim.version == 2
    sim.version = 5
    assert sim.version == 5
    with pytest.raises(ValueError, match=r"version 4 after version 5"):
        sim.version = 4
    delayed = SimSampler(weight_delay_s=10.0, clock=lambda: 0.0)
    delayed.load_weights(3)
    delayed.version = 3                                        # assignment skips the delay
    assert delayed.version == 3


def test_policy_version_is_the_one_visible_at_the_start():
    ft = FakeTime()
    sim = SimSampler(vocab_size=8, drift=1.0, seconds_per_call=1.0, weight_delay_s=0.5, clock=ft.clock,
                     sleep=ft.sleep)
    params = SamplingParams(max_new_tokens=4, logprobs=True)
    sim.load_weights(1)
    ft.now = 0.5
    sim.load_weights(2)                                        # published, not visible until 1.0
    r = sim.generate([[1]], params, n=16, seed=3)              # starts at 0.5, sleeps until 1.5
    assert ft.now == 1.5 and sim.version == 2
    assert r.policy_version == 1
    ref = SimSampler(vocab_size=8, drift=1.0)
    ref.load_weights(1)
    same = ref.generate([[1]], params, n=16, seed=3)
    assert torch.equal(r.completion_ids, same.completion_ids)
    assert torch.equal(r.behavior_logprobs, same.behavior_logprobs)
    assert sim.generate([[1]], params, n=16, seed=3).policy_version == 2


def test_load_weights_from_another_thread_during_generate():
    loaded = threading.Event()

    def sleep(seconds: float) -> None:      # generate is "running": load from another thread, which must not block
        t = threading.Thread(target=lambda: (sim.load_weights(7), loaded.set()))
        t.start()
        t.join(timeout=5)

    sim = SimSampler(seconds_per_call=1.0, sleep=sleep)
    r = sim.generate([[1]], SamplingParams(max_new_tokens=3), n=2, seed=0)
    assert loaded.is_set() and r.policy_version == 0 and sim.version == 7


# ---------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------

def test_slept_time_and_counters():
    ft = FakeTime()
    sim = SimSampler(vocab_size=4, eos_id=1, seconds_per_call=0.5, seconds_per_token=0.25, clock=ft.clock,
                     sleep=ft.sleep)
    r1 = sim.generate([[1], [2]], SamplingParams(max_new_tokens=20), n=5, seed=0)
    r2 = sim.generate([[1]], SamplingParams(max_new_tokens=3), n=2, seed=1)
    expected = [0.5 + 0.25 * int(r.lengths.max()) for r in (r1, r2)]
    assert r1.lengths.min() < r1.lengths.max()                 # the longest row sets the time
    assert ft.slept == expected
    assert sim.calls == 2 and sim.busy_s == pytest.approx(sum(expected))
    free = SimSampler(sleep=ft.sleep)
    free.generate([[1]], SamplingParams(max_new_tokens=2), n=1, seed=0)
    assert ft.slept == expected and free.calls == 1 and free.busy_s == 0.0   # nothing to sleep: sleep not called


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,name", [
    (dict(params=None), "params"), (dict(n=0), "n"), (dict(n=True), "n"), (dict(n=1.0), "n"),
    (dict(seed="1"), "seed"), (dict(seed=False), "seed"), (dict(prompt_ids=[]), "prompt_ids"),
    (dict(prompt_ids="12"), "prompt_ids"), (dict(prompt_ids=[[1], []]), r"prompt_ids\[1\]"),
    (dict(prompt_ids=[[1, "2"]]), r"prompt_ids\[0\]"), (dict(prompt_ids=[[1.5]]), r"prompt_ids\[0\]"),
])
def test_generate_validation_names_the_argument(kwargs, name):
    args = dict(prompt_ids=[[1]], params=SamplingParams(), n=1, seed=0) | kwargs
    with pytest.raises(ValueError, match=name):
        SimSampler().generate(args["prompt_ids"], args["params"], n=args["n"], seed=args["seed"])


@pytest.mark.parametrize("kwargs,name", [
    (dict(vocab_size=1), "vocab_size"), (dict(eos_id=12), "eos_id"), (dict(eos_id=-1), "eos_id"),
    (dict(drift=float("nan")), "drift"), (dict(seconds_per_call=-1.0), "seconds_per_call"),
    (dict(seconds_per_token=float("inf")), "seconds_per_token"), (dict(weight_delay_s=-0.1), "weight_delay_s"),
    (dict(seed=1.0), "seed"), (dict(clock=3), "clock"), (dict(sleep=None), "sleep"),
])
def test_constructor_validation_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SimSampler(**kwargs)


def test_version_validation():
    sim = SimSampler()
    for bad in (-1, "2", 1.0, True):
        with pytest.raises(ValueError, match="version"):
            sim.load_weights(bad)
        with pytest.raises(ValueError, match="version"):
            sim.logits(bad)


def test_in_flight_generation_draws_each_step_from_the_version_visible_then():
    """With ``refresh``: versions switch between steps; the tokens of a step at version v are those of a plain call at
    v (same uniforms), behaviour log-probs are under logits(v), and the slept time is the same as without refresh."""
    ft = FakeTime()
    s = SimSampler(seconds_per_call=0.5, seconds_per_token=0.1, clock=ft.clock, sleep=ft.sleep)
    params = SamplingParams(temperature=1.0, max_new_tokens=6, logprobs=True)
    steps = {"n": 0}

    def refresh():
        steps["n"] += 1
        if steps["n"] == 2:          # before step 2
            s.load_weights(3)
    r = s.generate([[1], [2]], params, n=4, seed=9, refresh=refresh)
    ref = {v: SimSampler() for v in (0, 3)}
    ref[3].version = 3
    plain = {v: ref[v].generate([[1], [2]], params, n=4, seed=9) for v in (0, 3)}
    mask = r.loss_mask
    assert torch.equal(r.token_versions, torch.where(mask & (torch.arange(r.completion_ids.shape[1]) >= 2), 3, 0))
    assert r.policy_version == 0
    for t in range(r.completion_ids.shape[1]):
        v = 0 if t < 2 else 3
        alive = mask[:, t]
        assert torch.equal(r.completion_ids[alive, t], plain[v].completion_ids[alive, t])
        want = sim_logprobs(s.logits(v))[r.completion_ids[alive, t]].float()
        torch.testing.assert_close(r.behavior_logprobs[alive, t], want)
    assert sum(ft.slept) == pytest.approx(0.5 + 0.1 * r.completion_ids.shape[1]) and s.calls == 1

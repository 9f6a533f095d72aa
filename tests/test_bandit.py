"""The exactly solvable toy: closed-form max@k against enumeration, and training through the real pipeline."""

import itertools

import pytest
import torch

from rlvr import bandit

F64 = torch.float64


def _enumerated_max_at_k(probs: list[float], rewards: list[float], k: int) -> float:
    """E[max of k i.i.d. draws] by summing over all A^k ordered tuples."""
    total = 0.0
    for tup in itertools.product(range(len(probs)), repeat=k):
        p = 1.0
        for a in tup:
            p *= probs[a]
        total += p * max(rewards[a] for a in tup)
    return total


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_exact_max_at_k_equals_enumeration(seed, k):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(5, generator=gen, dtype=F64), -1)
    rewards = torch.tensor([0.0, 0.3, 1.0, 0.3, -0.5], dtype=F64)      # ties and a negative reward
    expected = _enumerated_max_at_k(probs.tolist(), rewards.tolist(), k)
    assert bandit.exact_max_at_k(probs, rewards, k).item() == pytest.approx(expected, abs=1e-14)


def test_exact_max_at_k_binary_is_one_minus_miss_probability():
    probs = torch.tensor([0.1, 0.6, 0.3], dtype=F64)
    rewards = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    for k in range(1, 6):
        assert bandit.exact_max_at_k(probs, rewards, k).item() == pytest.approx(1 - 0.9**k, abs=1e-15)


def test_exact_max_at_k_gradient_matches_finite_differences():
    theta = torch.tensor([0.2, -0.4, 1.1, 0.0], dtype=F64, requires_grad=True)
    rewards = torch.tensor([1.0, 0.5, 0.0, 0.25], dtype=F64)
    f = lambda t: bandit.exact_max_at_k(torch.softmax(t, -1), rewards, 3)   # noqa: E731
    (grad,) = torch.autograd.grad(f(theta), theta)
    h = 1e-6
    for i in range(4):
        e = torch.zeros(4, dtype=F64)
        e[i] = h
        fd = (f(theta.detach() + e) - f(theta.detach() - e)) / (2 * h)
        assert grad[i].item() == pytest.approx(fd.item(), abs=1e-8)


def test_make_problems_initial_right_answer_probability_in_range():
    problems = bandit.make_problems(50, 6, correct_prob=(0.05, 0.2), seed=3)
    p_right = torch.softmax(problems.init_logits, -1)[:, 0]
    assert ((p_right > 0.05 - 1e-12) & (p_right < 0.2 + 1e-12)).all()
    assert (problems.rewards[:, 0] == 1).all() and (problems.rewards[:, 1:] == 0).all()


@pytest.mark.parametrize("advantage,kwargs", [("grpo", {}), ("rloo", {}), ("aapo", {}), ("maxpo", {"k": 4}),
                                              ("pkpo", {"k": 4}), ("passk_training", {"k": 4})])
def test_training_raises_exact_pass_at_k(advantage, kwargs):
    problems = bandit.make_problems(16, 5, seed=0)
    res = bandit.train(problems, advantage=advantage, advantage_kwargs=kwargs, steps=60, seed=1)
    assert len(res.pass_at_1) == 61
    # Every estimator must improve the exact objective it is built for by a wide margin.
    assert res.pass_at_k[-1] > res.pass_at_k[0] + 0.2
    assert res.pass_at_1[-1] > res.pass_at_1[0] + 0.2


def test_zero_learning_rate_changes_nothing():
    problems = bandit.make_problems(8, 4, seed=0)
    res = bandit.train(problems, steps=5, lr=0.0)
    assert torch.equal(res.final_logits, problems.init_logits)
    assert res.pass_at_1[0] == res.pass_at_1[-1]


def test_unknown_estimator_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown advantage estimator 'nope'"):
        bandit.train(bandit.make_problems(4, 3), advantage="nope", steps=1)

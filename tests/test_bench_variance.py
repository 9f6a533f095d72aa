"""The variance benchmark (python -m benchmarks variance): exact E[g] and tr Cov(g) by enumeration, checked against closed forms and sampling."""
from __future__ import annotations

import pytest
import torch

from rlvr.bandit import exact_max_at_k
from benchmarks.variance import ESTIMATORS, PROBLEMS, enumerate_groups, exact_grad_stats, run

UNBIASED = [e for e in ESTIMATORS if e[1] in ("maxpo", "pkpo")]
CASES = [(torch.tensor(r), torch.tensor(t)) for r, t in PROBLEMS.values()]


def test_enumeration_covers_every_group_once_with_its_probability():
    probs = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    answers, p = enumerate_groups(probs, 3)
    assert answers.shape == (27, 3) and len({tuple(a) for a in answers.tolist()}) == 27
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-15)
    assert float(p[answers.tolist().index([0, 1, 2])]) == pytest.approx(0.5 * 0.3 * 0.2)


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("G,k", [(3, 2), (4, 2), (5, 3), (6, 4)])
@pytest.mark.parametrize("est", UNBIASED, ids=[e[0] for e in UNBIASED])
def test_maxpo_and_pkpo_are_unbiased_for_the_max_at_k_gradient(case, G, k, est):
    label, name, kwargs, scale = est
    if label == "pkpo[loo]" and G < k + 1 or label == "maxpo" and G < k + 1:
        pytest.skip("needs G >= k + 1")
    rewards, logits = CASES[case]
    s = exact_grad_stats(logits, rewards, G, k, label, name, kwargs, scale(G, k))
    assert s.rel_bias < 1e-12 and s.cosine == pytest.approx(1.0, abs=1e-12)
    assert s.variance > 0


@pytest.mark.parametrize("case", range(len(CASES)))
def test_rloo_is_unbiased_for_the_mean_reward_gradient(case):
    rewards, logits = CASES[case]
    s = exact_grad_stats(logits, rewards, 4, 1, "rloo", "rloo", {}, 1 / 4)  # k = 1: max@1 = mean reward
    assert s.rel_bias < 1e-12


def test_the_exact_variance_matches_a_sampled_estimate():
    rewards, logits = CASES[2]
    G, k = 5, 2
    s = exact_grad_stats(logits, rewards, G, k, "maxpo", "maxpo", {}, k / G)
    from rlvr import advantages
    probs = torch.softmax(logits.double(), -1)
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    answers = torch.multinomial(probs.expand(n, -1), G, replacement=True, generator=gen)
    adv = advantages.get("maxpo")(rewards.double()[answers], k=k)
    g = (k / G) * (torch.zeros(n, 4, dtype=torch.float64).scatter_add_(1, answers, adv)
                   - adv.sum(-1, keepdim=True) * probs)
    assert torch.allclose(g.mean(0), s.mean, atol=4 * float(g.std(0).max()) / n ** 0.5)
    sampled_var = float(((g - g.mean(0)) ** 2).sum(-1).mean())
    assert sampled_var == pytest.approx(s.variance, rel=0.02)
    theta = logits.double().clone().requires_grad_()
    exact_max_at_k(torch.softmax(theta, -1), rewards.double(), k).backward()
    assert torch.allclose(theta.grad, s.true_grad, atol=1e-15)


def test_the_table_lists_every_estimator_and_skips_binary_only_ones_on_graded_rewards():
    lines = run([4], [2])
    assert lines[0].startswith("| problem |") and len(lines) == 2 + 3 * len(ESTIMATORS) - 1
    assert not any("graded" in line and "passk_training" in line for line in lines)

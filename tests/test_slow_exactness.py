"""Slower exactness checks at realistic sizes (`make test-slow`); the default suite covers G <= 8 exhaustively."""

import itertools

import pytest
import torch

import maxk_references as B
from rlvr import advantages as A

F64 = torch.float64
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("G,k", [(64, 1), (64, 8), (64, 32), (64, 63), (256, 8), (256, 128), (256, 255)])
def test_maxpo_equals_literal_leave_two_out_at_large_G(G, k):
    gen = torch.Generator().manual_seed(G * 1000 + k)
    r = torch.rand(32, G, generator=gen, dtype=F64)
    r[:8] = torch.randint(0, 3, (8, G), generator=gen).to(F64)          # heavy ties, including binary-like rows
    fast = A.maxpo(r, k=k)
    torch.testing.assert_close(fast, B.maxpo_l2o_quadratic(r, k), rtol=0, atol=1e-9)
    assert fast.sum(-1).abs().max() < 1e-9


@pytest.mark.parametrize("G", [12, 14, 16])
def test_max_at_k_family_equals_enumeration_up_to_G16(G):
    gen = torch.Generator().manual_seed(G)
    r = torch.rand(6, G, generator=gen, dtype=F64)
    r[:2] = torch.randint(0, 4, (2, G), generator=gen).to(F64)
    for k in range(1, G):
        torch.testing.assert_close(A.maxpo(r, k=k), B.maxpo_enumeration(r, k), rtol=0, atol=1e-10)
        for baseline in ("none", "loo", "loo_minus_one"):
            if baseline == "loo_minus_one" and k < 2:
                continue
            torch.testing.assert_close(A.pkpo(r, k=k, baseline=baseline), B.pkpo_enumeration(r, k, baseline),
                                       rtol=0, atol=1e-10)


def _expected_score(weights_fn, probs: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """E over all A^n sample tuples of Σ_i w_i (e_{x_i} − p), the score of a softmax policy."""
    n_actions = probs.shape[0]
    tuples = torch.tensor(list(itertools.product(range(n_actions), repeat=n)))            # [A^n, n]
    prob = probs[tuples].prod(-1)                                                         # [A^n]
    w = weights_fn(rewards[tuples])                                                       # [A^n, n]
    onehot = torch.nn.functional.one_hot(tuples, n_actions).to(F64)                      # [A^n, n, A]
    score = (w[..., None] * (onehot - probs)).sum(1)                                      # [A^n, A]
    return (prob[:, None] * score).sum(0)


@pytest.mark.parametrize("n,k", [(6, 2), (6, 3), (6, 5), (7, 4)])
def test_maxpo_and_pkpo_unbiased_for_larger_groups(n, k):
    theta = torch.tensor([0.3, -0.2, 0.9, -1.0], dtype=F64, requires_grad=True)
    rewards = torch.tensor([0.0, 0.3, 1.0, 0.3], dtype=F64)
    probs = torch.softmax(theta, -1)
    # exact max@k by enumeration of A^k tuples
    tuples = torch.tensor(list(itertools.product(range(4), repeat=k)))
    J = (probs[tuples].prod(-1) * rewards[tuples].max(-1).values).sum()
    (grad,) = torch.autograd.grad(J, theta)
    p = probs.detach()
    got = _expected_score(lambda R: k / n * A.maxpo(R, k=k), p, rewards, n)
    torch.testing.assert_close(got, grad, rtol=0, atol=1e-10)
    for baseline in ("none", "loo", "loo_minus_one"):
        got = _expected_score(lambda R: A.pkpo(R, k=k, baseline=baseline), p, rewards, n)
        torch.testing.assert_close(got, grad, rtol=0, atol=1e-10)

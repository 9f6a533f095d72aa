"""Unbiasedness by exact enumeration on a tiny categorical policy (ALGORITHMS.md §2.7 item 4, §5 item 2).

Policy: p = softmax(θ) over A actions, reward table R[a]. A group is n i.i.d. draws x_1..x_n. With
the score ∇_θ log p(a) = e_a − p, the expected estimator

    E[ c · Σ_i w_i(x) (e_{x_i} − p) ] = Σ_{x ∈ [A]^n} Π_i p(x_i) · c · Σ_i w_i(x) (e_{x_i} − p)

is computed exactly by enumerating all A^n tuples (the advantage function runs once on the [A^n, n]
batch of their rewards), and compared with torch.autograd.grad of the exact objective:
    k = 1 family:   J(θ) = E[r] = Σ_a p_a R_a
    max@k family:   J(θ) = E[max(r_1..r_k)] = Σ_{y ∈ [A]^k} Π_j p(y_j) · max_j R[y_j]   (enumerated)
"""

from __future__ import annotations

import itertools

import pytest
import torch

from rlvr.advantages import dr_grpo, grpo, include_one, max_at_k, maxpo, passk_training, pkpo, rloo, spec

F64 = torch.float64
TOL = 1e-10
THETA3 = torch.tensor([0.3, -0.7, 0.5], dtype=F64)                # fixed "random" logits
THETA4 = torch.tensor([0.2, -0.4, 0.9, -1.1], dtype=F64)
R3 = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
R4 = torch.tensor([0.0, 0.3, 0.3, 1.0], dtype=F64)               # with a tie across two actions
R3_BINARY = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
R4_BINARY = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=F64)


def expected_estimator(theta: torch.Tensor, reward_table: torch.Tensor, n: int, weights, scale: float) -> torch.Tensor:
    """Exact E[scale · Σ_i w_i ∇log p(x_i)] by enumerating all A^n sample tuples."""
    A = theta.numel()
    p = torch.softmax(theta, 0)
    tuples = torch.tensor(list(itertools.product(range(A), repeat=n)))   # [A^n, n]
    prob = p[tuples].prod(-1)                                            # [A^n]
    W = weights(reward_table[tuples])                                    # [A^n, n]
    onehot = torch.nn.functional.one_hot(tuples, A).to(F64)              # [A^n, n, A]
    score_sum = (W[..., None] * onehot).sum(1) - W.sum(1, keepdim=True) * p   # Σ_i w_i (e_{x_i} − p)
    assert abs(float(prob.sum()) - 1.0) < 1e-14
    return scale * (prob[:, None] * score_sum).sum(0)


def grad_mean_reward(theta: torch.Tensor, reward_table: torch.Tensor) -> torch.Tensor:
    t = theta.clone().requires_grad_()
    J = (torch.softmax(t, 0) * reward_table).sum()
    return torch.autograd.grad(J, t)[0]


def grad_max_at_k(theta: torch.Tensor, reward_table: torch.Tensor, k: int) -> torch.Tensor:
    """∇ of E[max of k i.i.d. rewards], the expectation enumerated over all A^k tuples."""
    t = theta.clone().requires_grad_()
    p = torch.softmax(t, 0)
    J = torch.zeros((), dtype=F64)
    for y in itertools.product(range(t.numel()), repeat=k):
        J = J + torch.stack([p[a] for a in y]).prod() * max(float(reward_table[a]) for a in y)
    return torch.autograd.grad(J, t)[0]


def assert_same(expected: torch.Tensor, truth: torch.Tensor, label: str) -> None:
    err = float((expected - truth).abs().max())
    assert err < TOL, f"{label}: E[estimator] − ∇J = {err:.3e}; E = {expected.tolist()}, ∇J = {truth.tolist()}"


POLICIES = [pytest.param(THETA3, R3, id="A3"), pytest.param(THETA4, R4, id="A4-tied"),
            pytest.param(THETA3, R3_BINARY, id="A3-binary")]


# ---- k = 1: J = E[r] ------------------------------------------------------------------------------

@pytest.mark.parametrize("theta,table", POLICIES)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_k1_estimators_unbiased_for_mean_reward(theta, table, n):
    truth = grad_mean_reward(theta, table)
    assert float(truth.abs().max()) > 1e-3                               # a non-trivial target
    assert_same(expected_estimator(theta, table, n, rloo, 1 / n), truth, "rloo, scale 1/n")
    assert_same(expected_estimator(theta, table, n, dr_grpo, 1 / (n - 1)), truth, "dr_grpo, scale 1/(n−1)")
    assert_same(expected_estimator(theta, table, n, lambda r: maxpo(r, k=1), 1 / n), truth, "maxpo(k=1), scale k/n")
    assert_same(expected_estimator(theta, table, n, lambda r: pkpo(r, k=1, baseline="none"), 1.0), truth,
                "pkpo none (k=1), scale 1")
    assert_same(expected_estimator(theta, table, n, lambda r: pkpo(r, k=1, baseline="loo"), 1.0), truth,
                "pkpo loo (k=1), scale 1")


# ---- max@k family -----------------------------------------------------------------------------------

NK = [(4, 2), (5, 3), (4, 1), (3, 3), (5, 2), (3, 2)]


@pytest.mark.parametrize("theta,table", POLICIES)
@pytest.mark.parametrize("n,k", NK, ids=[f"n{n}k{k}" for n, k in NK])
def test_max_at_k_estimators_unbiased(theta, table, n, k):
    truth = grad_max_at_k(theta, table, k)
    assert float(truth.abs().max()) > 1e-3
    checked = 0
    # PKPO: scale 1 for all three baselines (PKPO's own normalisation).
    assert_same(expected_estimator(theta, table, n, lambda r: pkpo(r, k=k, baseline="none"), 1.0), truth, "pkpo none")
    checked += 1
    if n >= k + 1:
        assert_same(expected_estimator(theta, table, n, lambda r: pkpo(r, k=k, baseline="loo"), 1.0), truth, "pkpo loo")
        # MaxPO: scale k/n.
        assert_same(expected_estimator(theta, table, n, lambda r: maxpo(r, k=k), k / n), truth, "maxpo, scale k/n")
        # The "include-one minus U-statistic" form q − U, scale k/(n − k) (§2.7 item 4).
        assert_same(expected_estimator(theta, table, n, lambda r: include_one(r, k=k) - max_at_k(r, k=k)[:, None],
                                       k / (n - k)), truth, "q − U, scale k/(n−k)")
        checked += 3
    if k >= 2:
        assert_same(expected_estimator(theta, table, n, lambda r: pkpo(r, k=k, baseline="loo_minus_one"), 1.0),
                    truth, "pkpo loo−1")
        checked += 1
    assert checked >= 2


def test_documented_grad_scales_are_the_unbiased_ones():
    # spec(name).grad_scale strings, evaluated at (G, k), give the scales used above.
    n, k = 5, 3
    truth = grad_max_at_k(THETA3, R3, k)
    scale = eval(spec("maxpo").grad_scale.split(":")[0], {}, {"k": k, "G": n})   # "k/G"
    assert scale == k / n
    assert_same(expected_estimator(THETA3, R3, n, lambda r: maxpo(r, k=k), scale), truth, "maxpo, spec scale")
    scale = eval(spec("dr_grpo").grad_scale.split(":")[0], {}, {"G": n})          # "1/(G-1)"
    assert_same(expected_estimator(THETA3, R3, n, dr_grpo, scale), grad_mean_reward(THETA3, R3), "dr_grpo, spec scale")


# ---- biased estimators: right direction, wrong (data-dependent) scale -------------------------------

@pytest.mark.parametrize("theta,table", [pytest.param(THETA3, R3_BINARY, id="A3"), pytest.param(THETA4, R4_BINARY, id="A4")])
@pytest.mark.parametrize("n,k", [(4, 2), (5, 3), (5, 2)])
def test_passk_training_direction_but_not_unbiased(theta, table, n, k):
    truth = grad_max_at_k(theta, table, k)          # binary rewards: max@k = pass@k
    E = expected_estimator(theta, table, n, lambda r: passk_training(r, k=k), 1 / n)
    cos = float(E @ truth) / float(E.norm() * truth.norm())
    assert cos > 0.99, cos                           # binary rewards: parallel (score weights depend on correctness only)
    rel = float((E - truth).norm() / truth.norm())
    assert rel > 1e-3, "passk_training with scale 1/G unexpectedly unbiased"


@pytest.mark.parametrize("theta,table", [pytest.param(THETA3, R3, id="A3"), pytest.param(THETA4, R4, id="A4-tied")])
@pytest.mark.parametrize("n", [3, 4, 5])
def test_grpo_positive_direction_but_biased(theta, table, n):
    truth = grad_mean_reward(theta, table)
    E = expected_estimator(theta, table, n, grpo, 1 / n)
    assert float(E @ truth) > 0
    rel = float((E - truth).norm() / truth.norm())
    assert rel > 1e-3, "grpo unexpectedly unbiased"

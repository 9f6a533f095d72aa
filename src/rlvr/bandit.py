"""An exactly solvable RLVR toy: N "problems", each a softmax policy over A candidate answers.

Each problem n has logits θ_n [A] and a reward per answer r_n [A] (1 for the right answer, partial
credit or 0 for the others). Sampling G answers per problem and scoring them is a one-token RL
step, so the whole pipeline of rlvr (advantage registry -> PolicyLossInputs -> loss registry ->
aggregate -> optimiser) runs on it in milliseconds, while pass@k and max@k of the current policy
are known in closed form:  with answers sorted by reward r_(1) <= ... <= r_(A) and F_j the policy's
probability of an answer no better than r_(j),  max@k = Σ_j r_(j) (F_j^k − F_{j−1}^k).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlvr import advantages as adv_registry
from rlvr import losses as loss_registry

Tensor = torch.Tensor


def exact_max_at_k(probs: Tensor, rewards: Tensor, k: int) -> Tensor:
    """E[max of k i.i.d. rewards] under a categorical policy, differentiable in ``probs``.   [..., A] -> [...]

    Example: exact_max_at_k(torch.tensor([0.5, 0.5]), torch.tensor([0., 1.]), 2) -> 0.75 (= 1 − 0.5²).
    """
    if probs.shape != rewards.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and rewards {tuple(rewards.shape)} must have the same shape")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    r_sorted, order = torch.sort(rewards, dim=-1, stable=True)
    cdf = torch.gather(probs, -1, order).cumsum(-1).clamp(0.0, 1.0)
    prev = torch.cat([torch.zeros_like(cdf[..., :1]), cdf[..., :-1]], -1)
    return (r_sorted * (cdf**k - prev**k)).sum(-1)


@dataclass
class Problems:
    """Rewards [N, A] per answer and the initial (reference) logits [N, A]."""

    rewards: Tensor
    init_logits: Tensor


def make_problems(n_problems: int = 64, n_answers: int = 6, *, partial_credit: float = 0.0,
                  correct_prob: tuple[float, float] = (0.02, 0.3), seed: int = 0) -> Problems:
    """Problems with one right answer (reward 1) whose initial probability is drawn from ``correct_prob``.

    With ``partial_credit`` > 0 one wrong answer per problem earns that reward (a continuous max@k task).
    """
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_problems, n_answers, generator=gen, dtype=torch.float64)
    rewards = torch.zeros(n_problems, n_answers, dtype=torch.float64)
    rows = torch.arange(n_problems)
    rewards[rows, 0] = 1.0
    if partial_credit:
        rewards[rows, 1] = partial_credit
    # Set the right answer's logit so that its initial probability is the drawn target p.
    lo, hi = correct_prob
    p = lo + (hi - lo) * torch.rand(n_problems, generator=gen, dtype=torch.float64)
    others = torch.logsumexp(logits[:, 1:], -1)
    logits[:, 0] = others + torch.log(p / (1 - p))
    return Problems(rewards=rewards, init_logits=logits)


@dataclass
class TrainResult:
    pass_at_1: list[float] = field(default_factory=list)   # exact, mean over problems, per step (before the step)
    pass_at_k: list[float] = field(default_factory=list)
    final_logits: Tensor | None = None


def train(problems: Problems, *, advantage: str = "grpo", advantage_kwargs: dict | None = None,
          loss: str = "reinforce", loss_kwargs: dict | None = None, aggregation: str | None = None,
          k_eval: int = 4, steps: int = 100, prompts_per_step: int = 16, group_size: int = 8,
          lr: float = 0.05, seed: int = 0) -> TrainResult:
    """Train the tabular policy with the named estimator and loss; record exact pass@1 and pass@k_eval.

    The loop is the real one in miniature: sample G answers per prompt, score them, compute
    advantages through the registry (reference samples from the initial policy when the
    estimator's spec asks for them), build PolicyLossInputs (T = 1 token per response), take the
    registered loss, aggregate, and step Adam.
    """
    advantage_kwargs, loss_kwargs = dict(advantage_kwargs or {}), dict(loss_kwargs or {})
    adv_spec, loss_spec = adv_registry.spec(advantage), loss_registry.spec(loss)
    aggregation = aggregation or loss_spec.default_aggregation
    gen = torch.Generator().manual_seed(seed)
    logits = problems.init_logits.clone().requires_grad_()
    ref_probs = torch.softmax(problems.init_logits, -1)
    opt = torch.optim.Adam([logits], lr=lr)
    result = TrainResult()
    n_problems = problems.rewards.shape[0]
    for _ in range(steps):
        probs = torch.softmax(logits.detach(), -1)
        result.pass_at_1.append(float(exact_max_at_k(probs, problems.rewards, 1).mean()))
        result.pass_at_k.append(float(exact_max_at_k(probs, problems.rewards, k_eval).mean()))

        idx = torch.randint(n_problems, (prompts_per_step,), generator=gen)                    # [P]
        answers = torch.multinomial(probs[idx], group_size, replacement=True, generator=gen)  # [P, G]
        rewards = torch.gather(problems.rewards[idx], 1, answers)                              # [P, G]
        if adv_spec.needs_reference_samples:
            ref_answers = torch.multinomial(ref_probs[idx], group_size, replacement=True, generator=gen)
            advantage_kwargs["ref_rewards"] = torch.gather(problems.rewards[idx], 1, ref_answers)
        adv = adv_spec.fn(rewards, **advantage_kwargs)                                          # [P, G]

        logp = torch.log_softmax(logits[idx], -1).gather(1, answers)                          # [P, G]
        inputs = loss_registry.PolicyLossInputs(
            logprobs=logp.reshape(-1, 1), advantages=adv.reshape(-1),
            loss_mask=torch.ones(logp.numel(), 1, dtype=torch.bool),
            old_logprobs=logp.detach().reshape(-1, 1), behavior_logprobs=logp.detach().reshape(-1, 1))
        per_token, _ = loss_spec.fn(inputs, **loss_kwargs)
        opt.zero_grad()
        loss_registry.aggregate(per_token, inputs.loss_mask, aggregation).backward()
        opt.step()
    result.final_logits = logits.detach()
    probs = torch.softmax(result.final_logits, -1)
    result.pass_at_1.append(float(exact_max_at_k(probs, problems.rewards, 1).mean()))
    result.pass_at_k.append(float(exact_max_at_k(probs, problems.rewards, k_eval).mean()))
    return result

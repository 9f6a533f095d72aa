"""Exact gradient bias and variance of the max@k estimators on the bandit toy (``python -m benchmarks variance``).

One problem: a softmax policy π = softmax(θ) over A answers with rewards r [A]. A group is G i.i.d. answers;
an estimator turns the group's rewards into advantages A_i and the gradient estimate

    g = c · Σ_i A_i ∇_θ log π(a_i),     ∇_θ log π(a) = e_a − π,

with c the estimator's exact scale (``spec(name).grad_scale``: k/G for maxpo, 1 for pkpo, 1/G for grpo,
rloo and passk_training). Enumerating all A^G groups with their probabilities Π_i π(a_i) gives E[g] and
tr Cov(g) = E‖g − E g‖² exactly (no sampling), and autograd of the closed form
``bandit.exact_max_at_k`` gives the true ∇ max@k. Reported per estimator:

* relative bias ‖E g − ∇J_k‖ / ‖∇J_k‖ (0 up to rounding for the unbiased ones: maxpo, pkpo);
* cosine between E g and ∇J_k (the direction a biased estimator follows);
* tr Cov(g), the variance at equal budget (G samples); and for biased estimators also the variance
  rescaled to the true gradient's length, tr Cov(g)·(‖∇J_k‖ / ‖E g‖)², so that a smaller scale does not
  pass for a lower variance.

grpo and rloo estimate ∇ pass@1 (mean reward), not ∇ max@k: they are listed for their direction.
``passk_training`` needs binary rewards and is left out of non-binary problems.

``--setting tiny-arith`` and ``--setting smollm2`` run the same study by Monte Carlo on a language model at its
initial weights (``benchmarks.variance_llm``, whose docstring gives the estimates and options: --prompts, --group,
--replicates, --ks, --seed, --threads); the default ``--setting bandit`` is the enumeration above (--groups, --ks).
"""
from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from typing import Any

import torch

from rlvr import advantages
from rlvr.bandit import exact_max_at_k
from benchmarks.cli import int_list, positive_int

__all__ = ["ESTIMATORS", "GradStats", "exact_grad_stats", "enumerate_groups", "add_arguments", "command"]

Tensor = torch.Tensor

# (label, registry name, keyword arguments, exact scale c as a function of (G, k))
ESTIMATORS: tuple[tuple[str, str, dict[str, Any], Any], ...] = (
    ("maxpo", "maxpo", {}, lambda G, k: k / G),
    ("pkpo[none]", "pkpo", {"baseline": "none"}, lambda G, k: 1.0),
    ("pkpo[loo]", "pkpo", {"baseline": "loo"}, lambda G, k: 1.0),
    ("pkpo[loo_minus_one]", "pkpo", {"baseline": "loo_minus_one"}, lambda G, k: 1.0),
    ("passk_training", "passk_training", {}, lambda G, k: 1 / G),
    ("grpo", "grpo", {}, lambda G, k: 1 / G),
    ("rloo", "rloo", {}, lambda G, k: 1 / G),
)


def enumerate_groups(probs: Tensor, G: int) -> tuple[Tensor, Tensor]:
    """Every ordered group of G answers and its probability.   probs [A] -> (answers Long[A^G, G], prob [A^G])."""
    A = probs.shape[0]
    answers = torch.tensor(list(itertools.product(range(A), repeat=G)), dtype=torch.long)
    return answers, probs[answers].prod(-1)


@dataclass(frozen=True)
class GradStats:
    label: str
    mean: Tensor          # E[g], [A]
    true_grad: Tensor     # ∇ max@k, [A]
    variance: float       # tr Cov(g)

    @property
    def rel_bias(self) -> float:
        return float((self.mean - self.true_grad).norm() / self.true_grad.norm())

    @property
    def cosine(self) -> float:
        return float(torch.nn.functional.cosine_similarity(self.mean, self.true_grad, dim=0))

    @property
    def variance_at_true_scale(self) -> float:
        return self.variance * float(self.true_grad.norm() / self.mean.norm()) ** 2


def exact_grad_stats(logits: Tensor, rewards: Tensor, G: int, k: int, label: str, name: str,
                     kwargs: dict[str, Any], scale: float) -> GradStats:
    """E[g], tr Cov(g) and ∇ max@k for one estimator, by enumerating all A^G groups (float64)."""
    logits = logits.to(torch.float64)
    rewards = rewards.to(torch.float64)
    probs = torch.softmax(logits, -1)
    answers, p = enumerate_groups(probs, G)                                        # [N, G], [N]
    spec = advantages.spec(name)
    extra = dict(kwargs, k=k) if spec.takes_k else dict(kwargs)
    adv = spec.fn(rewards[answers], **extra).to(torch.float64)                      # [N, G]
    A = probs.shape[0]
    counts = torch.zeros(answers.shape[0], A, dtype=torch.float64).scatter_add_(1, answers, adv)
    g = scale * (counts - adv.sum(-1, keepdim=True) * probs)                       # [N, A]
    mean = (p[:, None] * g).sum(0)
    variance = float((p * ((g - mean) ** 2).sum(-1)).sum())
    theta = logits.clone().requires_grad_()
    (true_grad,) = torch.autograd.grad(exact_max_at_k(torch.softmax(theta, -1), rewards, k), theta)
    return GradStats(label, mean, true_grad, variance)


PROBLEMS = {
    # name: (rewards, logits) — one right answer of probability about 0.1 or 0.3, or graded rewards
    "binary, p(right)≈0.10": ([1.0, 0.0, 0.0, 0.0], [0.0, 1.2, 0.9, 0.4]),
    "binary, p(right)≈0.30": ([1.0, 0.0, 0.0, 0.0], [0.6, 0.5, 0.1, -0.4]),
    "graded 0/0.3/0.6/1": ([1.0, 0.6, 0.3, 0.0], [-0.5, 0.2, 0.4, 0.8]),
}


def run(Gs: list[int], ks: list[int]) -> list[str]:
    lines = ["| problem | G | k | estimator | rel. bias | cos(E g, ∇J) | tr Cov(g) | tr Cov at true scale |",
             "|:--|--:|--:|:--|--:|--:|--:|--:|"]
    for pname, (r, theta) in PROBLEMS.items():
        rewards, logits = torch.tensor(r, dtype=torch.float64), torch.tensor(theta, dtype=torch.float64)
        binary = bool(((rewards == 0) | (rewards == 1)).all())
        for G in Gs:
            for k in ks:
                if k >= G:
                    continue
                for label, name, kwargs, scale in ESTIMATORS:
                    if name == "passk_training" and not binary:
                        continue
                    if label == "pkpo[loo_minus_one]" and k < 2:
                        continue
                    s = exact_grad_stats(logits, rewards, G, k, label, name, kwargs, scale(G, k))
                    lines.append(f"| {pname} | {G} | {k} | {label} | {s.rel_bias:.1e} | {s.cosine:.4f} | "
                                 f"{s.variance:.4g} | {s.variance_at_true_scale:.4g} |")
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    from benchmarks import variance_llm

    p.add_argument("--setting", choices=["bandit", *variance_llm.SETTINGS], default="bandit",
                   help="bandit: exact, by enumeration (default); tiny-arith, smollm2: Monte Carlo on that language "
                        "model (benchmarks.variance_llm.SETTINGS)")
    p.add_argument("--groups", type=int_list, default=None,
                   help="bandit: comma-separated group sizes G (A^G groups are enumerated: 4^8 = 65,536; default 4,8)")
    p.add_argument("--ks", type=int_list, default=None,
                   help="comma-separated k of max@k (k < G; default 2,4 for bandit and smollm2, 2,4,8 for tiny-arith)")
    variance_llm.add_arguments(p)


def command(args: argparse.Namespace) -> int:
    import sys

    from benchmarks import variance_llm

    other = ["--groups"] if args.setting != "bandit" else [f"--{n}" for n in variance_llm.OPTIONS]
    given = [o for o in other if getattr(args, o[2:]) is not None]
    if given:
        verb = "does" if len(given) == 1 else "do"
        print(f"python -m benchmarks variance: error: {', '.join(given)} {verb} not apply to --setting {args.setting}",
              file=sys.stderr)
        return 2
    if args.setting != "bandit":
        return variance_llm.command(args)
    groups = args.groups if args.groups is not None else [4, 8]
    for G in groups:
        positive_int(str(G))
    print("\n".join(run(groups, args.ks if args.ks is not None else [2, 4])))
    return 0

"""The algorithm of a run, resolved once from the config's ``algo`` section.

``Algorithm.from_config(cfg)`` looks every name up in its registry exactly once and checks the combination
before any model or data loads. The object then holds everything the loop needs about the algorithm: the
advantage estimator's and the loss's registry entries with their keyword arguments, the aggregation, the KL
estimator and coefficients, and the facts derived from the entries (whether a critic, π_old, behaviour or
reference log-probs, or reference samples are needed). The loop never looks a name up again and never
branches on a name: it asks this object.

Advantages are always token-level, ``Float32[B, T]`` with 0 at masked positions: a sequence-level estimator's
value is broadcast over its response's tokens here, once, so nothing downstream looks at a tensor's rank.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from rlvr import advantages as advantage_registry
from rlvr import kl as kl_registry
from rlvr import losses
from rlvr.config import TrainConfig

Tensor = torch.Tensor

__all__ = ["Algorithm"]


@dataclass(frozen=True)
class Algorithm:
    """An advantage estimator, a policy loss and how they are combined, resolved from the registries.

    advantage_kwargs include ``k`` for estimators that take it; ``max_tokens`` is the generation budget
    (Dr. GRPO's constant in ``seq_mean_token_sum_norm``); ``old_from_behavior`` takes π_old of a ratio loss
    from the sampler's log-probs (``algo.old_logprobs=behavior``).
    """

    advantage: advantage_registry.AdvantageSpec
    loss: losses.LossSpec
    aggregation: str
    kl: Callable[..., Tensor]
    advantage_kwargs: dict[str, Any] = field(default_factory=dict)
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    kl_coef: float = 0.0
    reward_kl_coef: float = 0.0
    old_from_behavior: bool = False
    max_tokens: int | None = None

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "Algorithm":
        """Resolve ``cfg.algo`` and check it against the rest of the config; raises ValueError naming the key."""
        a = cfg.algo
        estimator, loss = advantage_registry.spec(a.advantage), losses.spec(a.loss)
        if a.aggregation is not None and a.aggregation not in losses.AGGREGATIONS:
            raise ValueError(f"algo.aggregation {a.aggregation!r} is not one of {', '.join(losses.AGGREGATIONS)}")
        kwargs = dict(a.advantage_kwargs) | ({"k": a.k} if estimator.takes_k else {})
        algo = cls(advantage=estimator, loss=loss, aggregation=a.aggregation or loss.default_aggregation,
                   kl=kl_registry.get(a.kl_estimator), advantage_kwargs=kwargs, loss_kwargs=dict(a.loss_kwargs),
                   kl_coef=a.kl_coef, reward_kl_coef=a.reward_kl_coef, old_from_behavior=a.old_logprobs == "behavior",
                   max_tokens=cfg.rollout.max_new_tokens)
        algo._check(cfg)
        return algo

    # ------------------------------------------------------------------------------------------
    # Facts the loop asks about
    # ------------------------------------------------------------------------------------------

    @property
    def needs_critic(self) -> bool:
        """A value model is built and trained (token-level estimators such as gae)."""
        return self.advantage.needs_values

    @property
    def needs_reference_samples(self) -> bool:
        """G samples of the frozen initial model per prompt are drawn and scored (AAPO)."""
        return self.advantage.needs_reference_samples

    @property
    def needs_reference_model(self) -> bool:
        """The frozen initial model is needed: a KL term, KL in the reward, or reference samples."""
        return self.kl_coef > 0 or self.reward_kl_coef > 0 or self.needs_reference_samples

    @property
    def sampler_logprobs(self) -> bool:
        """The sampler must return behaviour log-probs: the loss reads them, or takes its ratio to them."""
        return self.loss.needs_behavior_logprobs or self.behavior_as_old

    @property
    def behavior_as_old(self) -> bool:
        """π_old of the ratio loss is the sampler's log-probs instead of a learner forward."""
        return self.loss.needs_old_logprobs and self.old_from_behavior and not self.loss.needs_behavior_logprobs

    def needs_frozen_old(self, updates: int) -> bool:
        """π_old needs its own no-grad forward before the first update: with one optimiser step per batch it
        equals the current log-probs (detached), which the update reuses."""
        return self.loss.needs_old_logprobs and updates > 1 and not self.behavior_as_old

    # ------------------------------------------------------------------------------------------
    # Advantages and loss inputs
    # ------------------------------------------------------------------------------------------

    def advantages(self, rewards: Tensor, loss_mask: Tensor, *, ref_rewards: Tensor | None = None,
                   values: Tensor | None = None, kl: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(advantages Float32[B, T], returns Float32[B, T] or None) from rewards [P, G] (B = P·G, prompt-major).

        loss_mask: Bool[B, T] of the batch. ref_rewards [P, G]: the reference samples' rewards (when the
        estimator needs them); values, kl [B, T]: the critic's V_old and the KL-in-reward term (token-level
        estimators; returns are then the critic's targets)."""
        kwargs = dict(self.advantage_kwargs)
        if self.needs_reference_samples:
            kwargs["ref_rewards"] = ref_rewards
        if not self.needs_critic:
            adv = self.advantage.fn(rewards, **kwargs).reshape(-1).to(torch.float32)          # [B]
            return torch.where(loss_mask, adv[:, None], torch.zeros((), dtype=torch.float32)), None
        kwargs.update(values=values, loss_mask=loss_mask)
        if self.reward_kl_coef > 0:
            kwargs.update(kl=kl, kl_coef=self.reward_kl_coef)
        adv, returns = self.advantage.fn(rewards, **kwargs)
        return adv.to(torch.float32), returns.to(torch.float32)

    def loss_inputs(self, logprobs: Tensor, adv: Tensor, mask: Tensor, *, old: Tensor | None,
                    behavior: Tensor | None, ref: Tensor | None) -> losses.PolicyLossInputs:
        """The loss's inputs for one micro-batch. π_old is the sampler's log-probs (``behavior_as_old``), the
        frozen forward when there is one, else the current log-probs detached (one optimiser step per batch)."""
        if self.behavior_as_old:
            old = behavior
        elif old is None:
            old = logprobs.detach()
        return losses.PolicyLossInputs(logprobs=logprobs, advantages=adv, loss_mask=mask, old_logprobs=old,
                                       ref_logprobs=ref,
                                       behavior_logprobs=behavior if self.loss.needs_behavior_logprobs else None)

    # ------------------------------------------------------------------------------------------
    # Checks, before anything loads
    # ------------------------------------------------------------------------------------------

    def _check(self, cfg: TrainConfig) -> None:
        a, G = cfg.algo, cfg.rollout.group_size
        name = a.advantage
        if self.advantage.takes_k and a.k is None:
            raise ValueError(f"algo.advantage={name} takes k: set algo.k (e.g. algo.k=4)")
        if self.advantage.takes_k and a.k > G:
            raise ValueError(f"algo.k={a.k} exceeds rollout.group_size={G}")
        if not self.advantage.takes_k and a.k is not None:
            raise ValueError(f"algo.k is set but advantage {name!r} does not take k")
        self._check_on_one_group(cfg)
        if self.old_from_behavior and (not self.loss.needs_old_logprobs or self.loss.needs_behavior_logprobs):
            why = "reads the behaviour log-probs itself" if self.loss.needs_behavior_logprobs else "has no ratio"
            raise ValueError(f"algo.old_logprobs=behavior applies to ratio losses that read π_old (ppo_clip, "
                             f"cispo); {a.loss!r} {why}")
        if cfg.trainer == "async" and self.needs_critic:
            raise ValueError(f"algo.advantage={name} needs a critic, which the async trainer does not train; use "
                             "trainer=sync")
        if self.reward_kl_coef > 0 and not self.needs_critic:
            raise ValueError(f"algo.reward_kl_coef applies to token-level estimators (those that need values, e.g. "
                             f"gae), not to {name!r}")

    def _check_on_one_group(self, cfg: TrainConfig) -> None:
        """Call the estimator once on one group of G rewards 0, 1, 0, 1, ... with the config's k and kwargs, so
        that its own checks (k against the group size, unknown or bad kwargs) fail before the model loads."""
        G = cfg.rollout.group_size
        rewards = (torch.arange(G) % 2).to(torch.float64)[None]                     # [1, G]
        mask = torch.ones(G, 1, dtype=torch.bool)
        try:
            self.advantages(rewards, mask, ref_rewards=rewards, values=torch.zeros(G, 1), kl=torch.zeros(G, 1))
        except (ValueError, TypeError) as err:
            k = f", algo.k={cfg.algo.k}" if self.advantage.takes_k else ""
            raise ValueError(f"algo.advantage={cfg.algo.advantage} with rollout.group_size={G}{k} and "
                             f"algo.advantage_kwargs={dict(cfg.algo.advantage_kwargs)}: {err}") from err

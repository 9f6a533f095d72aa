"""Monte-Carlo gradient variance of the max@k estimators on a language model
(``python -m benchmarks variance --setting tiny-arith`` or ``--setting smollm2``).

The bandit setting of the variance benchmark enumerates every group; a language model's completions cannot be
enumerated, so here E[g] and tr Cov(g) are estimated by Monte Carlo at FIXED parameters θ, on a FIXED set of P
prompts (drawn with ``--seed`` from the training split of the setting's config, as the trainer's ``PromptStream``
draws them): the variance is over sampling only. The settings (``SETTINGS``):

* ``tiny-arith``: the shipped tiny-arith model's pretrained weights, every parameter trainable (a full
  fine-tune, 1.1 M parameters), data and verifier of configs/tiny_arith/grpo.yaml; defaults P = 8, G = 16,
  R = 64, k ∈ {2, 4, 8};
* ``smollm2``: SmolLM2-135M-Instruct with the LoRA adapters of configs/smollm2/grpo.yaml at their initialisation
  (r = 16 on q/k/v/o, seeded as the trainer seeds them; the trainable parameters are the adapters', and with
  lora_B = 0 at initialisation only lora_B has a non-zero gradient), on that config's task (the main job's);
  defaults P = 8, G = 8 (the studies' group), R = 32, k ∈ {2, 4}.

The model is built as the trainer builds it (``rlvr.trainer.load_policy``), in float32.

One replicate r = 1..R draws G completions o_{p,i} per prompt p (``HFSampler``, temperature 1, top_p 1, the
config's max_new_tokens, seed ``derive_seed(seed, "variance", r)``), scores them with the config's verifier
(rewards [P, G]) and computes, in one forward pass in float32 (``rlvr.logprobs.completion_logprobs``, response
tokens t < lengths[b] as in the trainer), the sequence log-probs

    ℓ_{p,i}(θ) = log π_θ(o_{p,i} | x_p) = Σ_t log π_θ(o_{p,i,t} | x_p, o_{p,i,<t}),       ℓ: [B = P·G].

At temperature 1 and top_p 1 the sampling distribution is π_θ itself, so ∇ℓ is its score function. Every estimator
of ``benchmarks.variance.ESTIMATORS`` (same labels, registry names, kwargs and exact scales c(G, k)) turns the
rewards into advantages A [P, G] and the gradient estimate over all N trainable parameters

    g = c · (1/P) Σ_p Σ_i A_{p,i} ∇_θ ℓ_{p,i} = ∇_θ Σ_b w_b ℓ_b,    w = c·A/P flattened: [B],    g: float64 [N],

for every estimator e at once (``estimator_gradients``, a vector-Jacobian trick): rows of a batch do not interact
in a decoder, so ONE backward of Σ_b ℓ_b to the outputs y of the modules that hold parameters gives every row's
δ_b = ∂ℓ_b/∂y_b; the per-sample parameter gradients G_b follow module by module (linear layer: Σ_t δ_{b,t}ᵀ x_{b,t},
one bmm; output head: Σ_t (onehot(o_t) − softmax(z_t))ᵀ h_t in closed form; norms and embeddings: ``torch.func.vmap``
of their vector-Jacobian product) and are contracted with the weights W [E, B] right away, g = W·G, so no more than
one module's [B, *shape] is held. Rows whose weight is 0 for every estimator are dropped first. One forward and one
backward per replicate instead of one backward per estimator: 7-9x faster at the defaults (17 estimator columns,
~38 tokens a row; 0.7-1.0 s against 6.3-6.8 s a replicate on one thread; equal to ~4e-6 relative in float32).
A model where this does not apply (UnsupportedModel) falls back to one ``torch.autograd.grad(...,
retain_graph=True)`` per estimator (``weighted_gradient``); the tests check both against per-sample backward
passes.

All estimators of a replicate see the same samples (common random numbers); replicates are independent.
Combinations an estimator refuses are skipped (maxpo and pkpo[loo] need G >= k + 1, pkpo[loo_minus_one] k >= 2);
``passk_training`` needs binary rewards (no format or overlong shaping). grpo and rloo do not depend on k: their
gradient is computed once per replicate and its row is repeated under every k (only the comparisons with that k's
maxpo differ).

Statistics per estimator, from R vectors g_1..g_R (``Moments``: running sums, O(N) memory per estimator; the plain
sums are exact enough in float64 unless ‖E g‖²/tr Cov exceeds ~1e10):

* ḡ = (1/R) Σ_r g_r and ‖ḡ‖. The Monte-Carlo ‖ḡ‖² is biased upward: E‖ḡ‖² = ‖E g‖² + tr Cov(g)/R. The table
  reports both ‖ḡ‖ and the debiased ‖E g‖ = sqrt(max(0, ‖ḡ‖² − tr Cov/R));
* tr Cov(g) = Σ_r ‖g_r − ḡ‖² / (R − 1) (unbiased) and the relative variance tr Cov / ‖E g‖² (debiased norm; "inf"
  when the debiased ‖E g‖² is not positive, i.e. the mean is below the noise);
* the ratio ρ = tr Cov(g) / tr Cov(g_maxpo) at the same k with a 95% delta-method interval: the R replicates are
  cut into M = min(16, ⌊R/2⌋) consecutive blocks, each block b gives independent unbiased estimates (a_b, m_b) of
  both traces, and Var(log ρ̂) ≈ Σ_b (a_b/ā − m_b/m̄)² / (M(M − 1)); the interval is ρ·exp(±t_{0.975, M−1}·se)
  around the full-sample ρ (which also uses the spread between blocks, so the blocks' se is, if anything, too
  large). "—" when M < 2;
* cos(ḡ, ḡ_maxpo) (noise shrinks it towards 0);
* maxpo and the three pkpo variants are all unbiased for ∇ max@k, so their means must agree up to noise: the
  table gives ‖ḡ − ḡ_maxpo‖ / ‖ḡ_maxpo‖ next to its noise level sqrt(tr Cov(g − g_maxpo)/R) / ‖ḡ_maxpo‖, the
  root of E‖ḡ − ḡ_maxpo‖² when the means are equal (d_r = g_r − g_maxpo,r is tracked as its own ``Moments``).

Cost: R·(generation + one forward + one backward + E·B·N multiply-adds); memory O(E·N): per estimator two
float64 vectors (the running sums), plus the per-sample gradients of one module.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from rlvr import advantages

__all__ = ["Column", "MCResult", "Moments", "UnsupportedModel", "block_bounds", "estimator_columns",
           "estimator_gradients", "format_table", "monte_carlo", "ratio_interval", "replicate_gradients",
           "sequence_logprobs", "weighted_gradient", "SETTINGS", "Setting", "add_arguments", "check_args", "command",
           "run"]

Tensor = torch.Tensor
MAX_BLOCKS = 16
REFERENCE = "maxpo"
UNBIASED_FOR_MAX_AT_K = ("pkpo[none]", "pkpo[loo]", "pkpo[loo_minus_one]")

Draw = Callable[[int], tuple[Any, Tensor]]
"""replicate r -> (Rollout of B = P·G rows, prompt-major; rewards float64 [P, G])."""


# ----------------------------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """One estimator at one k (k None: the estimator does not take k); ``scale`` is its exact c(G, k)."""

    label: str
    name: str
    kwargs: dict[str, Any]
    k: int | None
    scale: float

    @property
    def key(self) -> tuple[str, int | None]:
        return self.label, self.k

    def advantages(self, rewards: Tensor) -> Tensor:
        """[P, G] float64 rewards -> [P, G] float64 advantages."""
        extra = dict(self.kwargs, k=self.k) if self.k is not None else dict(self.kwargs)
        return advantages.spec(self.name).fn(rewards, **extra).to(torch.float64)

    def weights(self, rewards: Tensor) -> Tensor:
        """w = c·A/P flattened prompt-major: float64 [B]."""
        return (self.scale * self.advantages(rewards) / rewards.shape[0]).reshape(-1)


def estimator_columns(G: int, ks: Sequence[int], *, binary: bool = True) -> list[Column]:
    """Every (estimator, k) of ``variance.ESTIMATORS`` the estimator accepts at group size G (k-free ones once)."""
    from benchmarks.variance import ESTIMATORS

    columns = []
    for label, name, kwargs, scale in ESTIMATORS:
        if name == "passk_training" and not binary:
            continue
        for k in (ks if advantages.spec(name).takes_k else [None]):
            column = Column(label, name, dict(kwargs), k, float(scale(G, k)))
            try:
                column.advantages(torch.zeros(1, G, dtype=torch.float64))
            except ValueError:
                continue                                                # e.g. maxpo with G < k + 1
            columns.append(column)
    return columns


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------

def sequence_logprobs(model: torch.nn.Module, prompt_ids: list[list[int]], completion_ids: Tensor, lengths: Tensor,
                      chunk_size: int = 1024) -> Tensor:
    """ℓ_b = Σ_{t < lengths[b]} log π(o_{b,t} | ...) with grad: [B] in the model's dtype (fp32, or fp64)."""
    from rlvr.logprobs import completion_logprobs

    device = next(model.parameters()).device
    lengths = lengths.to(device)
    # Unshared: the per-sample gradients of ``estimator_gradients`` need every row's decoder pass to be its own.
    lp, _ = completion_logprobs(model, prompt_ids, completion_ids.to(device), lengths, chunk_size=chunk_size,
                                share_prompts=False)
    mask = torch.arange(lp.shape[1], device=device)[None, :] < lengths[:, None]      # the trainer's loss_mask
    return (lp * mask).sum(-1)


def weighted_gradient(seq_logprobs: Tensor, weights: Tensor, params: Sequence[Tensor]) -> Tensor:
    """∇_θ Σ_b w_b ℓ_b over ``params``, flattened: float64 [N]. One backward; the graph is kept for the next call."""
    w = weights.to(seq_logprobs.device, seq_logprobs.dtype)
    if not bool(w.any()):
        return torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    grads = torch.autograd.grad((w * seq_logprobs).sum(), params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).to(torch.float64).cpu()
                      for g, p in zip(grads, params)])


class UnsupportedModel(ValueError):
    """``estimator_gradients`` cannot split this model's gradient by sample (``monte_carlo`` then falls back)."""


@dataclass
class _Call:
    module: torch.nn.Module
    input: Tensor
    output: Tensor
    delta: Tensor | None = None       # ∂(Σ_b ℓ_b)/∂output, filled after the backward


class _Capture:
    """Forward hooks on every module that owns trainable parameters: its (input, output) per call, and the
    decoder's last hidden state (the output head's input)."""

    def __init__(self, model: torch.nn.Module, decoder: torch.nn.Module) -> None:
        self.owners = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
        self.decoder = decoder
        self.calls: list[_Call] = []
        self.hidden: Tensor | None = None

    def _record(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if len(args) != 1 or kwargs or not isinstance(args[0], Tensor) or not isinstance(output, Tensor):
            raise UnsupportedModel(f"{type(module).__name__} is not called as module(tensor) -> tensor")
        self.calls.append(_Call(module, args[0], output))

    def _record_hidden(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        self.hidden = output.last_hidden_state

    def __enter__(self) -> "_Capture":
        self.handles = [m.register_forward_hook(self._record, with_kwargs=True) for m in self.owners]
        self.handles.append(self.decoder.register_forward_hook(self._record_hidden))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


def _module_sample_grads(call: _Call, B: int) -> list[tuple[Tensor, Tensor]]:
    """(parameter, per-sample gradient [B, *shape]) of one module call, from its input x and the gradient δ of
    Σ_b ℓ_b at its output: for a linear layer ∂ℓ_b/∂W = Σ_t δ_{b,t}ᵀ x_{b,t} (one bmm); any other module by
    ``torch.func.vmap`` of its vector-Jacobian product over the rows."""
    m, x, delta = call.module, call.input.detach(), call.delta
    if x.shape[0] != B or delta.shape[0] != B:
        raise UnsupportedModel(f"{type(m).__name__} sees a batch of {x.shape[0]} rows, not the model's {B}")
    params = {n: p for n, p in m.named_parameters(recurse=False) if p.requires_grad}
    if isinstance(m, torch.nn.Linear):
        xs, ds = x.reshape(B, -1, x.shape[-1]), delta.reshape(B, -1, delta.shape[-1])
        out = {"weight": torch.bmm(ds.transpose(1, 2), xs), "bias": ds.sum(1)}
        return [(p, out[n]) for n, p in params.items()]
    from torch.func import functional_call, vjp, vmap

    detached = {n: p.detach() for n, p in params.items()}

    def one(xb: Tensor, db: Tensor) -> dict[str, Tensor]:
        _, pullback = vjp(lambda q: functional_call(m, q, (xb[None],))[0], detached)
        return pullback(db)[0]
    per_sample = vmap(one)(x, delta)
    return [(p, per_sample[n]) for n, p in params.items()]


def _head_sample_grads(head: torch.nn.Linear, hidden: Tensor, prompt_ids: list[list[int]], completion_ids: Tensor,
                       lengths: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per-sample gradient of ℓ_b w.r.t. the output head (weight, bias), in closed form: with z = h·Wᵀ + b at the
    positions predicting completion tokens (as ``completion_logprobs`` selects them) and dz = onehot(o) − softmax(z),
    ∂ℓ_b/∂W = Σ_t dz_{b,t}ᵀ h_{b,t} and ∂ℓ_b/∂b = Σ_t dz_{b,t}."""
    B, T = completion_ids.shape
    device = hidden.device
    prompt_lens = torch.tensor([len(p) for p in prompt_ids], device=device)
    t = torch.arange(T, device=device)
    valid = t[None, :] < lengths[:, None]                                             # [B, T]
    positions = (prompt_lens[:, None] - 1 + t[None, :]).clamp(max=hidden.shape[1] - 1)
    compute = torch.promote_types(torch.promote_types(hidden.dtype, head.weight.dtype), torch.float32)
    h = hidden.detach()[torch.arange(B, device=device)[:, None], positions].to(compute) * valid[..., None]
    z = h @ head.weight.detach().to(compute).T
    if head.bias is not None:
        z = z + head.bias.detach().to(compute)
    onehot = torch.nn.functional.one_hot(completion_ids, z.shape[-1]).to(compute)
    dz = (onehot - torch.softmax(z, -1)) * valid[..., None]                                  # [B, T, V]
    out = [(head.weight, torch.bmm(dz.transpose(1, 2), h))]
    if head.bias is not None:
        out.append((head.bias, dz.sum(1)))
    return [(p, g) for p, g in out if p.requires_grad]


def estimator_gradients(model: torch.nn.Module, prompt_ids: list[list[int]], completion_ids: Tensor, lengths: Tensor,
                        weights: Tensor, chunk_size: int = 1024) -> Tensor:
    """g_e = ∇_θ Σ_b W_{e,b} ℓ_b for every row e of ``weights`` [E, B]: float64 [E, N] over the trainable parameters
    (``model.parameters()`` order), from one forward and one backward.

    The rows of a batch do not interact in a decoder, so the gradient δ of Σ_b ℓ_b at a module's output, row b,
    is ∂ℓ_b/∂y_b: one backward (to the module outputs only, no parameter gradients) gives every sample's δ;
    per-sample parameter gradients G_b follow module by module (``_module_sample_grads``, ``_head_sample_grads``)
    and are contracted at once, g = W·G, never holding more than one module's [B, *shape]. Raises
    UnsupportedModel when a trainable parameter is not reached this way.
    """
    from rlvr.logprobs import decoder_and_head

    decoder, head = decoder_and_head(model)
    params = [p for p in model.parameters() if p.requires_grad]
    device = head.weight.device
    lengths, completion_ids = lengths.to(device), completion_ids.to(device)
    with _Capture(model, decoder) as cap:
        seq = sequence_logprobs(model, prompt_ids, completion_ids, lengths, chunk_size)
    deltas = torch.autograd.grad(seq.sum(), [c.output for c in cap.calls], allow_unused=True)
    B = len(prompt_ids)
    acc: dict[int, Tensor] = {}

    def contract(pieces: list[tuple[Tensor, Tensor]]) -> None:
        for p, G in pieces:
            g = weights.to(G.device, G.dtype) @ G.reshape(B, -1)                         # [E, numel]
            acc[id(p)] = acc[id(p)] + g if id(p) in acc else g                           # tied weights add up
    contract(_head_sample_grads(head, cap.hidden, prompt_ids, completion_ids[:, :int(lengths.max())], lengths))
    for call, delta in zip(cap.calls, deltas):
        call.delta = delta if delta is not None else torch.zeros_like(call.output)
        contract(_module_sample_grads(call, B))
        call.input = call.output = call.delta = None                                    # free as we go
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in acc]
    if missing:
        raise UnsupportedModel(f"no per-sample gradient for {missing[:3]}")
    return torch.cat([acc[id(p)].to(torch.float64).cpu() for p in params], dim=1)


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------

def block_bounds(R: int) -> list[tuple[int, int]]:
    """M = min(16, ⌊R/2⌋) consecutive blocks of replicates [start, end), sizes ⌊R/M⌋ or ⌈R/M⌉ (each >= 2)."""
    M = max(1, min(MAX_BLOCKS, R // 2))
    cuts = [b * R // M for b in range(M + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def _trace_cov(total: Tensor, sumsq: float, n: int) -> float:
    return (sumsq - float(total @ total) / n) / (n - 1) if n >= 2 else math.nan


@dataclass
class Moments:
    """Running Σ g, Σ ‖g‖² of vectors g: float64 [N], total and per block (``end_block`` closes a block)."""

    n: int = 0
    sumsq: float = 0.0
    total: Tensor | None = None
    block_trace_covs: list[float] = field(default_factory=list)
    _block: Tensor | None = None
    _block_sumsq: float = 0.0
    _block_n: int = 0

    def add(self, g: Tensor) -> None:
        g = g.to(torch.float64)
        self._block = g.clone() if self._block is None else self._block.add_(g)
        self._block_sumsq += float(g @ g)
        self._block_n += 1

    def end_block(self) -> None:
        if self._block_n == 0:
            return
        self.block_trace_covs.append(_trace_cov(self._block, self._block_sumsq, self._block_n))
        self.total = self._block if self.total is None else self.total.add_(self._block)
        self.n, self.sumsq = self.n + self._block_n, self.sumsq + self._block_sumsq
        self._block, self._block_sumsq, self._block_n = None, 0.0, 0

    @property
    def mean(self) -> Tensor:
        """ḡ = (1/R) Σ_r g_r."""
        return self.total / self.n

    @property
    def trace_cov(self) -> float:
        """Σ_r ‖g_r − ḡ‖² / (R − 1), unbiased for tr Cov(g)."""
        return _trace_cov(self.total, self.sumsq, self.n)

    @property
    def mean_norm(self) -> float:
        """‖ḡ‖ (biased upward: E‖ḡ‖² = ‖E g‖² + tr Cov/R)."""
        return float(self.mean.norm())

    @property
    def mean_norm2_debiased(self) -> float:
        """‖ḡ‖² − tr Cov/R, unbiased for ‖E g‖² (may be negative)."""
        return self.mean_norm ** 2 - self.trace_cov / self.n


def ratio_interval(num: Moments, den: Moments, level: float = 0.95) -> tuple[float, float, float]:
    """(ρ, lo, hi): ρ = tr Cov(num)/tr Cov(den) over all replicates, with a delta-method interval on log ρ from
    the paired block estimates (a_b, m_b): se² = Σ_b (a_b/ā − m_b/m̄)² / (M(M−1)); nan bounds when M < 2."""
    from scipy.stats import t as student_t

    rho = num.trace_cov / den.trace_cov if den.trace_cov > 0 else math.nan
    a = torch.tensor(num.block_trace_covs, dtype=torch.float64)
    m = torch.tensor(den.block_trace_covs, dtype=torch.float64)
    M = len(a)
    if M < 2 or not (a.mean() > 0 and m.mean() > 0) or math.isnan(rho):
        return rho, math.nan, math.nan
    se = float(((a / a.mean() - m / m.mean()) ** 2).sum() / (M * (M - 1))) ** 0.5
    q = float(student_t.ppf(0.5 + level / 2, M - 1))
    return rho, rho * math.exp(-q * se), rho * math.exp(q * se)


# ----------------------------------------------------------------------------------------------
# The Monte-Carlo loop
# ----------------------------------------------------------------------------------------------

@dataclass
class MCResult:
    columns: list[Column]
    ks: list[int]
    moments: dict[tuple[str, int | None], Moments]
    diffs: dict[tuple[str, int], Moments]          # (pkpo label, k) -> Moments of g − g_maxpo at k
    mean_reward: float = math.nan
    mean_length: float = math.nan


def replicate_gradients(model: torch.nn.Module, rollout: Any, weights: Tensor, chunk_size: int = 1024) -> Tensor:
    """g_e = ∇_θ Σ_b W_{e,b} ℓ_b for the weights [E, B] of one replicate: float64 [E, N].

    Rows whose weight is 0 for every estimator (e.g. groups with equal rewards under centred estimators) are left
    out of the forward (they add exactly 0). ``estimator_gradients`` (one backward in all) is used where it
    applies, else one backward per estimator (``weighted_gradient``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    rows = weights.ne(0).any(0).nonzero().squeeze(1)
    if len(rows) == 0:
        return torch.zeros(weights.shape[0], sum(p.numel() for p in params), dtype=torch.float64)
    prompt_ids = [rollout.prompt_ids[i] for i in rows.tolist()]
    lengths = rollout.lengths[rows]
    completion_ids = rollout.completion_ids[rows, :int(lengths.max())]
    W = weights[:, rows]
    try:
        return estimator_gradients(model, prompt_ids, completion_ids, lengths, W, chunk_size)
    except UnsupportedModel:
        seq = sequence_logprobs(model, prompt_ids, completion_ids, lengths, chunk_size)
        return torch.stack([weighted_gradient(seq, w, params) for w in W])


def monte_carlo(model: torch.nn.Module, draw: Draw, columns: Sequence[Column], replicates: int, *,
                chunk_size: int = 1024) -> MCResult:
    """R replicates: draw, the estimators' gradients (``replicate_gradients``), running statistics."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters")
    ks = sorted({c.k for c in columns if c.k is not None})
    moments = {c.key: Moments() for c in columns}
    diffs = {(c.label, c.k): Moments() for c in columns if c.label in UNBIASED_FOR_MAX_AT_K
             and (REFERENCE, c.k) in moments}
    reward_sum = length_sum = rows = 0.0
    for start, end in block_bounds(replicates):
        for r in range(start, end):
            rollout, rewards = draw(r)
            grads = replicate_gradients(model, rollout, torch.stack([c.weights(rewards) for c in columns]),
                                        chunk_size)
            by_key = {c.key: g for c, g in zip(columns, grads)}
            for key, g in by_key.items():
                moments[key].add(g)
            for (label, k), acc in diffs.items():
                acc.add(by_key[(label, k)] - by_key[(REFERENCE, k)])
            reward_sum += float(rewards.sum())
            length_sum += float(rollout.lengths.sum())
            rows += rewards.numel()
            del grads, by_key
        for acc in (*moments.values(), *diffs.values()):
            acc.end_block()
    return MCResult(list(columns), ks, moments, diffs, reward_sum / rows, length_sum / rows)


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

HEADER = ("| k | estimator | ‖ḡ‖ | ‖E g‖ (debiased) | tr Cov(g) | tr Cov / ‖E g‖² | tr Cov / maxpo [95% CI] | "
          "cos(ḡ, ḡ_maxpo) | ‖ḡ − ḡ_maxpo‖ / ‖ḡ_maxpo‖ (noise) |")
ALIGN = "|--:|:--|--:|--:|--:|--:|--:|--:|--:|"


def _f(x: float) -> str:
    return "—" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.4g}")


def _row(res: MCResult, column: Column, k: int) -> str:
    s, ref = res.moments[column.key], res.moments[(REFERENCE, k)]
    norm2 = s.mean_norm2_debiased
    rel_var = s.trace_cov / norm2 if norm2 > 0 else math.inf
    rho, lo, hi = ratio_interval(s, ref)
    ratio = "1 (ref.)" if column.label == REFERENCE else f"{_f(rho)} [{_f(lo)}, {_f(hi)}]"
    cos = float(torch.nn.functional.cosine_similarity(s.mean, ref.mean, dim=0)) \
        if s.mean_norm > 0 and ref.mean_norm > 0 else math.nan
    diff = "—"
    if (column.label, k) in res.diffs:
        d = res.diffs[(column.label, k)]
        diff = f"{_f(d.mean_norm / ref.mean_norm)} ({_f((d.trace_cov / d.n) ** 0.5 / ref.mean_norm)})"
    return (f"| {k} | {column.label} | {_f(s.mean_norm)} | {_f(max(norm2, 0.0) ** 0.5)} | {_f(s.trace_cov)} | "
            f"{_f(rel_var)} | {ratio} | {_f(cos)} | {diff} |")


def format_table(res: MCResult) -> list[str]:
    """The Markdown table: per k, every column in ``ESTIMATORS`` order (k-free ones repeated under each k)."""
    lines = [HEADER, ALIGN]
    for k in res.ks:
        lines += [_row(res, c, k) for c in res.columns if c.k in (k, None)]
    return lines


# ----------------------------------------------------------------------------------------------
# The settings
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """A language-model setting: its config, the overrides that make the bench's sampling the policy itself
    (temperature 1, top_p 1) and its defaults (P, G, R, ks)."""

    config: str
    overrides: tuple[str, ...]
    prompts: int
    group: int
    replicates: int
    ks: tuple[int, ...]


SAMPLING = ("rollout.temperature=1.0", "rollout.top_p=1.0", "reward.num_workers=0", "model.dtype=float32")
SETTINGS = {
    "tiny-arith": Setting("configs/tiny_arith/grpo.yaml", ("model.name=tiny-arith", "model.lora=false", *SAMPLING),
                          prompts=8, group=16, replicates=64, ks=(2, 4, 8)),
    "smollm2": Setting("configs/smollm2/grpo.yaml", SAMPLING, prompts=8, group=8, replicates=32, ks=(2, 4)),
}
"""--setting -> its Setting (the bandit setting is ``benchmarks.variance``'s own)."""


def _config(setting: str, seed: int, threads: int) -> Any:
    from benchmarks import config_path
    from rlvr.config import load_config

    s = SETTINGS[setting]
    return load_config(config_path(s.config), [*s.overrides, f"seed={seed}", f"model.threads={threads}"])


def _draw(cfg: Any, model: Any, tokenizer: Any, pool: Any, P: int, G: int) -> tuple[Draw, list[Any]]:
    """The fixed prompts (``PromptStream`` of the training split, seeded by cfg.seed, encoded as the trainer
    encodes them) and the replicate sampler."""
    from rlvr.rewards import RewardSettings, score
    from rlvr.rollout import HFSampler
    from rlvr.seeding import derive_seed
    from rlvr.trainer import PromptStream, build_problems, make_encoder, system_prompt
    from rlvr.types import SamplingParams

    train, _ = build_problems(cfg)
    problems = PromptStream(train, cfg.seed).take(P)
    encode = make_encoder(tokenizer, system_prompt(cfg))
    prompt_ids = [encode(p) for p in problems]
    sampler = HFSampler(model, tokenizer, max_batch_size=cfg.rollout.max_batch_size)
    r = cfg.rollout
    params = SamplingParams(temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens, stop=r.stop)
    settings = RewardSettings(cfg.reward.format_weight, cfg.reward.overlong_buffer, cfg.reward.overlong_penalty)

    def draw(rep: int) -> tuple[Any, Tensor]:
        rollout = sampler.generate(prompt_ids, params, n=G, seed=derive_seed(cfg.seed, "variance", rep))
        scores = score(pool, problems, rollout, G, settings, params.max_new_tokens)
        return rollout, scores.total.to(torch.float64).view(P, G)
    return draw, problems


def _trainable(cfg: Any, n_params: int) -> str:
    m = cfg.model
    if m.lora:
        return f"{n_params:,} trainable parameters: LoRA r={m.lora_rank} on {'/'.join(m.lora_target_modules)}"
    return f"{n_params:,} trainable parameters, every one"


def run(*, setting: str = "tiny-arith", prompts: int | None = None, group: int | None = None,
        replicates: int | None = None, ks: Sequence[int] | None = None, seed: int = 0,
        threads: int | None = None) -> list[str]:
    """The table and the settings line for a language-model setting (None: the setting's default)."""
    from benchmarks.cli import available_cores
    from rlvr.rewards import RewardPool
    from rlvr.trainer import load_policy

    s = SETTINGS[setting]
    prompts, group = prompts or s.prompts, group or s.group
    replicates, ks = replicates or s.replicates, list(ks or s.ks)
    t0 = time.perf_counter()
    threads = threads or available_cores()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cfg = _config(setting, seed, threads)
        model, tokenizer = load_policy(cfg, torch.device("cpu"))   # as a run builds it (LoRA seeded by cfg.seed)
        model.eval()
        binary = cfg.reward.format_weight == 0 and cfg.reward.overlong_buffer == 0
        columns = estimator_columns(group, ks, binary=binary)
        with RewardPool(num_workers=0, timeout_s=cfg.reward.timeout_s) as pool:
            draw, _ = _draw(cfg, model, tokenizer, pool, prompts, group)
            res = monte_carlo(model, draw, columns, replicates, chunk_size=cfg.model.logprob_chunk_size)
    finally:
        torch.set_num_threads(before)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    line = (f"setting {setting}: model {cfg.model.name} ({_trainable(cfg, n_params)}, float32, initial weights), "
            f"data/verifier of {s.config}; P={prompts} prompts (train split, seed {seed}), G={group}, "
            f"R={replicates} replicates ({len(block_bounds(replicates))} blocks for the CIs), temperature 1.0, "
            f"top_p 1.0, max_new_tokens {cfg.rollout.max_new_tokens}, seed {seed}; mean reward "
            f"{res.mean_reward:.3f}, mean completion length {res.mean_length:.1f} tokens; {threads} torch thread(s), "
            f"wall {time.perf_counter() - t0:.1f} s")
    return [*format_table(res), "", line]


# ----------------------------------------------------------------------------------------------
# Command line (options registered by benchmarks.variance)
# ----------------------------------------------------------------------------------------------

OPTIONS = ("prompts", "group", "replicates", "seed", "threads")
"""The options of the language-model settings (the bandit setting refuses them)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from benchmarks.cli import positive_int

    p.add_argument("--prompts", type=positive_int, default=None, help="LM settings: P, fixed prompts (default 8)")
    p.add_argument("--group", type=positive_int, default=None,
                   help="LM settings: G, samples per prompt (default 16 for tiny-arith, 8 for smollm2)")
    p.add_argument("--replicates", type=int, default=None,
                   help="LM settings: R, independent replicates, >= 2 (default 64 for tiny-arith, 32 for smollm2)")
    p.add_argument("--seed", type=int, default=None, help="LM settings: seed of the prompts and samples (default 0)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="LM settings: torch threads (default: every core this process may use; on a machine busy "
                        "with other work, --threads 1 can be more than 10x faster)")


def check_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run's keyword arguments, with the setting's defaults filled in; ValueError naming the option for bad
    input."""
    s = SETTINGS[args.setting]
    defaults = {"prompts": s.prompts, "group": s.group, "replicates": s.replicates, "seed": 0, "threads": None}
    kw = {name: defaults[name] if getattr(args, name) is None else getattr(args, name) for name in OPTIONS}
    ks = list(dict.fromkeys(args.ks)) if args.ks is not None else list(s.ks)
    G = kw["group"]
    if G < 2:
        raise ValueError(f"--group must be >= 2 (rloo and the max@k estimators need two samples), got {G}")
    if kw["replicates"] < 2:
        raise ValueError(f"--replicates must be >= 2 (tr Cov needs two replicates), got {kw['replicates']}")
    bad = [k for k in ks if not 1 <= k < G]
    if bad:
        raise ValueError(f"--ks: every k must satisfy 1 <= k < --group = {G} (maxpo, the reference of the "
                         f"comparisons, needs G >= k + 1); got {bad}")
    return dict(kw, ks=ks, setting=args.setting)


def command(args: argparse.Namespace) -> int:
    """Print the table and the settings line; exit status 2 with the message for bad input."""
    import os
    import sys

    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        kw = check_args(args)
    except ValueError as e:
        print(f"python -m benchmarks variance: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(run(**kw)))
    return 0

"""HFSampler: batched sampling from a Hugging Face causal LM with our own KV-cache decode loop (CPU, tests).

Why not ``model.generate``: on a CPU generation is the slowest stage of RL, and ``generate`` keeps computing
rows that have already finished, pads every prompt of a batch to the longest one and prefills a prompt once per
sample. This loop:

1. groups prompts of similar length into batches of at most ``max_batch_size`` rows (``plan_batches``);
2. left-pads the prompts of a batch, with the attention mask and explicit ``position_ids`` (``cumsum(mask) − 1``:
   the HF models number positions ``0..L−1`` from the first column, which is wrong for a left-padded row);
3. prefills each distinct prompt once and copies its KV cache to its ``n`` sample rows;
4. decodes with the model's ``DynamicCache`` and drops finished rows from the batch and the cache
   (``batch_select_indices``) every ``prune_every`` steps, so no work is spent on finished rows;
5. draws tokens by inverse-CDF sampling from counter-based uniforms (``uniforms``): the draw of completion row
   (prompt ``i``, sample ``j``) at step ``t`` is a hash of ``(seed, i, j, t)``. Hence a rollout is a function of the
   seed, and row (i, j) does not depend on ``n``, ``max_batch_size``, the other prompts' contents or when other
   rows finish, up to floating-point differences of the model's batched forward (different batch shapes may round
   the logits differently). No torch RNG (global or ``torch.Generator``) is used or touched: a Generator's stream
   depends on how many numbers were drawn before, i.e. on batch composition, which is what the hash avoids;
6. keeps the sampling itself cheap for a 49k vocabulary (per step, 32 rows, one core): two-level inverse CDF
   instead of a 25 ms float64 cumsum, and the top-p nucleus from top-64 / top-1024 candidates before falling back
   to a full sort (280 ms, more than the model's step); HF's ``torch.multinomial`` alone takes ~80 ms there;
7. while decoding, swaps HF's "sdpa" attention for ``_sdpa_gqa_attention`` (same kernel with ``enable_gqa``,
   bit-identical), because HF's copies K/V to every query head whenever an attention mask is present.

Measured with ``python -m benchmarks generate`` (8 prompts x 4 samples x 64 tokens, sampling at T=1): 1.8-2.0x the
tokens/s of ``model.generate`` on SmolLM2-135M (2.3x with top_p=0.95), 1.6x on tiny-random. Pruning at every step beat
every 8 steps and never; sharing the prefill beat prefilling every row (``--ablations``). Not used, because they
did not help on CPU: ``torch.compile(dynamic=True)`` (100 s to compile, then 10x slower per call: shapes change
every step); a preallocated KV buffer returning views (SDPA on strided K/V was 2.8x slower than the
``torch.cat`` it saves).

Finish rules: a row ends "stop" at an EOS token (``tokenizer.eos_token_id`` and ``generation_config.eos_token_id``)
or at the token whose decoded text completes a stop string (the token is kept; only the row's last
``4·max_len(stop) + 4`` tokens are decoded, which covers byte-level BPE splitting a character over up to 4 tokens),
and "length" after ``max_new_tokens`` tokens. ``lengths`` counts the ending token; later positions hold
``pad_token_id``.

Behaviour log-probs (``SamplingParams.logprobs``): at each step the log-probability of every live row's sampled token
under the raw logits, log_softmax(logits)[token] at temperature 1 and without top-p (``token_logprobs``), whatever
temperature and top_p drew it: the quantity ``rlvr.logprobs.completion_logprobs`` recomputes, so π_θ/π_b measures
policy drift only. It reads the logits the draw already had (one log_softmax and one gather per step, live rows only);
the draw itself is untouched, so tokens are bit-identical with and without it. Cost: ~1 ms a step for 32 rows of a
49k vocabulary on one core, below the timing noise of generation on tiny-random and SmolLM2-135M; nothing when off.

Weights: ``HFSampler.load_weights(version, state)`` copies a learner's trainable state (``trainable_state_dict``) into
the sampler's model; it is how a rollout worker takes the learner's newest weights. In-flight updates
(``generate(..., refresh=f)``, ``rollout.weight_sync=token``): ``f()`` runs before every forward pass after the first
(between decode steps, and before each later prompt batch's prefill) and may call ``load_weights``; the next
token is then drawn from the new weights over a KV cache the older ones computed (as PipelineRL, arXiv 2509.19128,
does), and each token records the version of the forward that produced its logits (``Rollout.token_versions``);
behaviour log-probs come from the same logits, so they stay token-aligned.
"""
from __future__ import annotations

import contextlib
import inspect
import numbers
from typing import Any, Callable, Iterator, Sequence

import torch
from transformers import DynamicCache

from rlvr.attention import GQA_SDPA
from rlvr.attention import gqa_attention as _gqa_attention
from rlvr.attention import sdpa_gqa_attention as _sdpa_gqa_attention  # noqa: F401  (tests compare it with HF's)
from rlvr.models import load_trainable_state_dict
from rlvr.rollout.sampler import check_generate_args
from rlvr.types import Rollout, SamplingParams

Tensor = torch.Tensor

__all__ = ["HFSampler", "nucleus_filter", "nucleus_candidates", "token_probs", "token_logprobs", "inverse_cdf_sample",
           "row_keys", "uniforms", "plan_batches", "check_weights_version", "GQA_SDPA"]

_M32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------
# Counter-based uniforms: a pure function of (seed, prompt index, sample index, step)
# ----------------------------------------------------------------------------------------------

def _fmix32(h: Tensor) -> Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding values in [0, 2³²): a bijection with full avalanche.
    Products of two 32-bit values wrap in int64; masking keeps their exact low 32 bits."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def _absorb(h: Tensor, word: Tensor | int) -> Tensor:
    """Fold one 32-bit word into hash state h (both in [0, 2³²))."""
    return _fmix32(((h ^ word) * 0x9E3779B1 + 0x7F4A7C15) & _M32)


def row_keys(seed: int, prompt_idx: Tensor, sample_idx: Tensor) -> Tensor:
    """Per-row hash keys.   seed: any int (taken mod 2⁶⁴); prompt_idx, sample_idx: Long[b] >= 0
    -> Long[b] in [0, 2³²)."""
    s = int(seed) % (1 << 64)
    h = _fmix32(torch.full_like(prompt_idx, 0x6A09E667 ^ (s & _M32)))
    h = _absorb(h, s >> 32)
    h = _absorb(h, prompt_idx & _M32)
    return _absorb(h, sample_idx & _M32)


def uniforms(keys: Tensor, step: int) -> Tensor:
    """Float64[b] in (0, 1) with 53 random bits: the draw of each row (``row_keys``) at decode step ``step``."""
    h1 = _absorb(keys, step & _M32)
    h2 = _absorb(h1, 0x5BD1E995)
    bits = (h1 >> 5) * (1 << 26) + (h2 >> 6)                 # 27 + 26 = 53 bits: < 2⁵³, exact in float64
    return (bits.to(torch.float64) + 0.5) / float(1 << 53)


# ----------------------------------------------------------------------------------------------
# The sampling distribution and the draw
# ----------------------------------------------------------------------------------------------

_NUCLEUS_STAGES = (64, 1024)     # top-k candidate widths tried before a full sort of the vocabulary
_CDF_BLOCK = 256                 # inverse-CDF block width for large vocabularies


def _exclusive_cumsum(x: Tensor) -> Tensor:
    """Σ_{l < k} x_l along the last dim (first entry exactly 0)."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1].cumsum(-1)], -1)


def _nucleus_of(vals: Tensor, ids: Tensor, top_p: float, complete: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Nucleus within candidates sorted by (probability desc, id asc).   vals, ids [r, k] -> (ok Bool[r],
    size Long[r], kept vals [r, k] with 0 outside the nucleus).

    Token k is kept iff the mass before it is < top_p. When the candidates are only the top k of the vocabulary
    (``complete`` False) a row's answer is final only if its nucleus ends before the last candidate with a
    probability strictly above it: then no token outside the candidates can tie with or precede a kept one.
    """
    keep = _exclusive_cumsum(vals) < top_p
    size = keep.sum(-1)
    if complete:
        ok = torch.ones_like(size, dtype=torch.bool)
    else:
        boundary = vals.gather(-1, (size - 1).unsqueeze(-1)).squeeze(-1)
        ok = (size < vals.shape[-1]) & (boundary > vals[:, -1])
    return ok, size, torch.where(keep, vals, torch.zeros((), dtype=vals.dtype, device=vals.device))


def _sorted_candidates(probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k most probable tokens of each row in order (probability desc, id asc).   [r, V] -> vals, ids [r, k]."""
    if k >= probs.shape[-1]:
        return probs.sort(dim=-1, descending=True, stable=True)
    vals, ids = probs.topk(k, dim=-1)
    by_id = ids.argsort(dim=-1)                                    # ties among candidates: lower id first
    vals, ids = vals.gather(-1, by_id), ids.gather(-1, by_id)
    order = vals.argsort(dim=-1, descending=True, stable=True)
    return vals.gather(-1, order), ids.gather(-1, order)


def nucleus_candidates(probs: Tensor, top_p: float) -> tuple[Tensor, Tensor]:
    """The top-p nucleus of each row as candidates.   probs [b, V] -> (vals [b, w], ids [b, w]), w = largest nucleus.

    vals are the kept probabilities (not renormalised), 0 in the padding after a row's nucleus; ids the tokens.
    Same set as sorting the whole vocabulary (``nucleus_filter``) but found with top-k (64, then 1024) first:
    a full sort of a 49k vocabulary costs more than a decode step of a 135M model on a CPU.
    """
    b, V = probs.shape
    rows = torch.arange(b, device=probs.device)
    found: list[tuple[Tensor, Tensor, Tensor]] = []
    for k in (*_NUCLEUS_STAGES, V):
        vals, ids = _sorted_candidates(probs[rows], min(k, V))
        ok, size, kept = _nucleus_of(vals, ids, top_p, complete=k >= V)
        width = int(size[ok].max()) if bool(ok.any()) else 0
        found.append((rows[ok], kept[ok, :width], ids[ok, :width]))
        rows = rows[~ok]
        if len(rows) == 0 or k >= V:
            break
    width = max(v.shape[-1] for _, v, _ in found)
    out_vals = probs.new_zeros((b, width))
    out_ids = torch.zeros((b, width), dtype=torch.long, device=probs.device)
    for r, v, i in found:
        out_vals[r, :v.shape[-1]] = v
        out_ids[r, :i.shape[-1]] = i
    return out_vals, out_ids


def nucleus_filter(probs: Tensor, top_p: float) -> Tensor:
    """Top-p (nucleus) filter.   probs [b, V] (rows sum to 1) -> [b, V], renormalised.

    Keeps the smallest set of most probable tokens whose mass is >= top_p (always at least the top token): in
    descending order, token k is kept iff the mass of the tokens before it is < top_p. Equal probabilities are
    ordered by token id (lower first), which decides ties at the boundary. top_p = 1 keeps every token.
    """
    if not 0 < top_p <= 1:
        raise ValueError(f"nucleus_filter: top_p must be in (0, 1], got {top_p}")
    if probs.dim() != 2:
        raise ValueError(f"nucleus_filter: probs must be [b, V], got shape {tuple(probs.shape)}")
    if top_p >= 1:
        return probs
    vals, ids = nucleus_candidates(probs, top_p)
    kept = torch.zeros_like(probs).scatter_add_(-1, ids, vals)       # padding adds 0 (to token 0)
    return kept / kept.sum(-1, keepdim=True)


def token_probs(logits: Tensor, temperature: float, top_p: float = 1.0) -> Tensor:
    """The distribution a token is drawn from.   logits [b, V] -> float32 [b, V].

    softmax(logits / temperature), then the nucleus filter. temperature must be > 0 (0 means greedy, which does
    not go through a distribution).
    """
    if not temperature > 0:
        raise ValueError(f"token_probs: temperature must be > 0 (0 = greedy), got {temperature}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return nucleus_filter(probs, top_p)


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log_softmax(logits)[token] per row, in float32, at temperature 1 and without top-p (the behaviour log-prob).
    logits [b, V] (any float dtype), tokens Long[b] -> Float32[b]. (The fused log_softmax then one gather beat
    logit − logsumexp on a CPU: 1.1 vs 1.8 ms for 32 x 49152.)"""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def check_weights_version(current: int, version: int, who: str) -> int:
    """``version`` as an int after checking that it is an int not below ``current`` (versions never go down)."""
    if isinstance(version, bool) or not isinstance(version, numbers.Integral):
        raise ValueError(f"{who}.load_weights: version must be an int, got {version!r}")
    if version < current:
        raise ValueError(f"{who}.load_weights: version {version} is older than the loaded version {current}; "
                         "versions must not go down")
    return int(version)


def _check_mass(total: Tensor) -> None:
    good = (total > 0) & torch.isfinite(total)
    if not bool(good.all()):
        bad = (~good).nonzero()[:, 0].tolist()
        raise ValueError(f"inverse_cdf_sample: rows {bad[:8]} have no finite positive probability mass")


def inverse_cdf_sample(probs: Tensor, u: Tensor) -> Tensor:
    """Draw one token per row by inverse CDF.   probs [b, V] (>= 0, positive total), u Float[b] in (0, 1) -> Long[b].

    Returns the first k with cdf_k >= u·cdf_V (sums in float64), so token k is drawn with probability
    probs_k / Σ probs for u uniform, and a zero-probability token is never drawn. For V > 2·256 the search is
    two-level (block sums, then one block), because a float64 cumsum over a 49k vocabulary costs ~25 ms per step.
    """
    b, V = probs.shape
    if V <= 2 * _CDF_BLOCK:
        cdf = probs.to(torch.float64).cumsum(-1)
        _check_mass(cdf[:, -1])
        target = u.to(torch.float64).unsqueeze(-1) * cdf[:, -1:]
        return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=V - 1)
    padded = torch.nn.functional.pad(probs, (0, (-V) % _CDF_BLOCK)).view(b, -1, _CDF_BLOCK)     # [b, nb, 256]
    block_mass = padded.sum(-1, dtype=torch.float64)                                          # [b, nb]
    block_cdf = block_mass.cumsum(-1)
    _check_mass(block_cdf[:, -1])
    target = u.to(torch.float64).unsqueeze(-1) * block_cdf[:, -1:]                             # [b, 1]
    block = torch.searchsorted(block_cdf, target).clamp_(max=block_cdf.shape[-1] - 1)          # [b, 1]
    before = torch.cat([torch.zeros_like(block_cdf[:, :1]), block_cdf[:, :-1]], -1)          # mass of earlier blocks
    rest = target - before.gather(-1, block)                                                  # mass into the block
    inner = padded.gather(1, block.unsqueeze(-1).expand(b, 1, _CDF_BLOCK)).squeeze(1).to(torch.float64).cumsum(-1)
    rest = torch.minimum(rest, inner[:, -1:])                                                 # rounding guard
    within = torch.searchsorted(inner, rest).clamp_(max=_CDF_BLOCK - 1)
    return (block * _CDF_BLOCK + within).squeeze(-1)


def _next_tokens(logits: Tensor, params: SamplingParams, keys: Tensor, step: int) -> Tensor:
    """Long[b]: greedy argmax at temperature 0, else a draw from ``token_probs`` with this step's uniforms
    (under top_p < 1 drawn among the nucleus candidates, not the whole vocabulary)."""
    if params.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    u = uniforms(keys, step).to(probs.device)
    if params.top_p >= 1:
        return inverse_cdf_sample(probs, u)
    vals, ids = nucleus_candidates(probs, params.top_p)
    return ids.gather(-1, inverse_cdf_sample(vals, u).unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# Batch planning
# ----------------------------------------------------------------------------------------------

def plan_batches(prompt_lengths: Sequence[int], n: int, max_batch_size: int) -> list[list[tuple[int, int, int]]]:
    """Group the P·n rows into batches of at most ``max_batch_size`` rows, prompts of similar length together.

    Prompts are taken in order of (length, index); each contributes its n rows, split over consecutive batches
    when they do not fit. Returns, per batch, entries ``(prompt index, first sample index, number of samples)``.
    Example: lengths [5, 2, 9], n=2, max_batch_size=3 -> [[(1, 0, 2), (0, 0, 1)], [(0, 1, 1), (2, 0, 2)]].
    """
    if n < 1 or max_batch_size < 1:
        raise ValueError(f"plan_batches: need n >= 1 and max_batch_size >= 1, got n={n}, "
                         f"max_batch_size={max_batch_size}")
    batches: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    room = max_batch_size
    for i in sorted(range(len(prompt_lengths)), key=lambda k: (prompt_lengths[k], k)):
        first = 0
        while first < n:
            take = min(room, n - first)
            current.append((i, first, take))
            first += take
            room -= take
            if room == 0:
                batches.append(current)
                current, room = [], max_batch_size
    if current:
        batches.append(current)
    return batches


# ----------------------------------------------------------------------------------------------
# Model plumbing
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside, then every submodule's own prior train/eval flag back (a mixed state survives)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def _eos_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """EOS ids: the tokenizer's eos_token_id plus generation_config.eos_token_id (an int or a list)."""
    ids: set[int] = set()
    candidates = [getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)]
    for value in candidates:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None:
                ids.add(int(item))
    return tuple(sorted(ids))


def _accepts_logits_to_keep(model: Any) -> bool:
    """Whether forward takes ``logits_to_keep`` (then prefill computes the LM head on the last position only).
    A PEFT model forwards **kwargs to its base model, so the base model's signature decides."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Left-pad to the longest prompt.   -> ids Long[p, L], attention mask Long[p, L] (1 = real token)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: Tensor) -> Tensor:
    """Long[p, L]: position of each real token counted from the row's first real token; pads get 0."""
    return (mask.cumsum(-1) - 1).clamp_(min=0)


# ----------------------------------------------------------------------------------------------
# The sampler
# ----------------------------------------------------------------------------------------------

class HFSampler:
    """Sampler over a Hugging Face causal LM (also a PEFT-wrapped one) with our own KV-cache decode loop.

    Args:
        model: causal LM; its device is used, its dtype kept; put in eval mode during ``generate`` and restored after.
        tokenizer: gives eos/pad ids and decodes texts (``skip_special_tokens=True``) and stop-string windows.
        max_batch_size: rows decoded together (a batch's prompts share one prefill each).
        prune_every: drop finished rows from the batch and KV cache every this many steps (1 = as soon as they
            finish; measured fastest, see ``python -m benchmarks generate``).
        share_prefill: prefill each distinct prompt once and copy its cache to its samples (else prefill every row).
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 64, prune_every: int = 1,
                 share_prefill: bool = True) -> None:
        for name, value in (("max_batch_size", max_batch_size), ("prune_every", prune_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HFSampler: {name} must be a positive int, got {value!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.prune_every = prune_every
        self.share_prefill = share_prefill
        self.version = 0
        self.eos_token_ids = _eos_ids(model, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else 0)
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        self._logits_to_keep = _accepts_logits_to_keep(model)

    # -- public ----------------------------------------------------------------------------------

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, *, n: int, seed: int,
                 refresh: Callable[[], Any] | None = None) -> Rollout:
        """Sample n completions per prompt.   P prompts -> Rollout with B = P·n rows, prompt-major.

        Deterministic in ``seed``; row (i, j) depends only on (model, prompt i, params, seed, i, j) up to the
        floating-point rounding of batched forwards (see the module docstring). Runs under inference_mode.
        refresh: called between decode steps; it may load newer weights (in-flight updates, module docstring),
        and the rollout then has ``token_versions`` and the oldest token's ``policy_version``.
        """
        prompts = check_generate_args("HFSampler.generate", prompt_ids, params, n, seed, vocab_size=self.vocab_size)
        device = next(self.model.parameters()).device
        B, start = len(prompts) * n, self.version
        out = torch.full((B, params.max_new_tokens), self.pad_token_id, dtype=torch.long, device=device)
        lengths = torch.full((B,), params.max_new_tokens, dtype=torch.long, device=device)
        stopped = torch.zeros(B, dtype=torch.bool, device=device)
        blp = torch.zeros((B, params.max_new_tokens), dtype=torch.float32, device=device) if params.logprobs else None
        tv = torch.zeros((B, params.max_new_tokens), dtype=torch.long, device=device) if refresh else None
        with torch.inference_mode(), _eval_mode(self.model), _gqa_attention(self.model):
            for k, plan in enumerate(plan_batches([len(p) for p in prompts], n, self.max_batch_size)):
                if k and refresh is not None:
                    refresh()
                self._decode_batch(prompts, plan, n, params, seed, out, lengths, stopped, blp, tv, refresh)
        out, lengths = out.cpu(), lengths.cpu()
        T = int(lengths.max()) if B else 0
        completion_ids = out[:, :T].clone()
        behavior_logprobs = blp[:, :T].cpu().clone() if blp is not None else None
        token_versions = tv[:, :T].cpu().clone() if tv is not None else None
        oldest = Rollout.oldest_version(token_versions, lengths, start) if token_versions is not None else start
        texts = self.tokenizer.batch_decode([row[:k].tolist() for row, k in zip(completion_ids, lengths.tolist())],
                                            skip_special_tokens=True) if B else []
        return Rollout(prompt_ids=[list(p) for p in prompts for _ in range(n)], completion_ids=completion_ids,
                       lengths=lengths, finish_reasons=["stop" if s else "length" for s in stopped.tolist()],
                       texts=list(texts), policy_version=oldest, behavior_logprobs=behavior_logprobs,
                       token_versions=token_versions)

    def load_weights(self, version: int, weights: dict[str, Tensor]) -> None:
        """Take new weights: copy ``weights`` into the model's trainable parameters, then set ``self.version``.

        This is how a rollout worker takes the learner's newest weights: ``weights`` is the learner's
        ``rlvr.models.trainable_state_dict`` (only the adapters under LoRA), so the sampler's model must be built the
        same way as the learner's (same trainable parameter names and shapes); values are cast to each parameter's
        dtype and device. ``version`` must not be below the current one (ValueError naming both); mismatched keys or
        shapes raise a ValueError and change nothing.
        """
        version = check_weights_version(self.version, version, "HFSampler")
        load_trainable_state_dict(self.model, weights)
        self.version = version

    # -- decoding --------------------------------------------------------------------------------

    def _forward(self, ids: Tensor, mask: Tensor, positions: Tensor, cache: DynamicCache) -> Tensor:
        """Logits of the last position.   ids, positions Long[b, s]; mask Long[b, past + s] -> [b, V]."""
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                                  "past_key_values": cache, "use_cache": True}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        return self.model(**kwargs).logits[:, -1, :]

    def _prefill(self, prompts: list[list[int]], plan: list[tuple[int, int, int]],
                 device: torch.device) -> tuple[Tensor, Tensor, DynamicCache]:
        """Run the batch's prompts; return (first-step logits [b, V], attention mask Long[b, L], cache) per row."""
        counts = torch.tensor([c for _, _, c in plan], device=device)
        row_prompt = torch.repeat_interleave(torch.arange(len(plan), device=device), counts)   # [b]
        ids, mask = _left_pad([prompts[i] for i, _, _ in plan], self.pad_token_id, device)     # [p, L]
        cache = DynamicCache(config=self.model.config)
        if self.share_prefill:
            logits = self._forward(ids, mask, _positions(mask), cache)                          # [p, V]
            if len(row_prompt) != len(plan):
                cache.batch_select_indices(row_prompt)
            return logits[row_prompt], mask[row_prompt], cache
        ids, mask = ids[row_prompt], mask[row_prompt]
        return self._forward(ids, mask, _positions(mask), cache), mask, cache

    def _decode_batch(self, prompts: list[list[int]], plan: list[tuple[int, int, int]], n: int,
                      params: SamplingParams, seed: int, out: Tensor, lengths: Tensor, stopped: Tensor,
                      blp: Tensor | None, tv: Tensor | None = None, refresh: Callable[[], Any] | None = None) -> None:
        """Generate the rows of one planned batch, writing tokens into ``out``, ends into ``lengths``/``stopped`` and,
        when ``blp`` (Float32[B, max_new_tokens]) is given, each token's behaviour log-prob into it; ``tv`` gets each
        token's weights version; ``refresh`` runs before every decode forward."""
        device = out.device
        prompt_idx = torch.tensor([i for i, j0, c in plan for _ in range(c)], device=device)
        sample_idx = torch.tensor([j for _, j0, c in plan for j in range(j0, j0 + c)], device=device)
        rows = prompt_idx * n + sample_idx                                   # global row of each batch row
        keys = row_keys(seed, prompt_idx, sample_idx)
        eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=device)
        logits, mask, cache = self._prefill(prompts, plan, device)
        version = self.version                                               # of the weights behind ``logits``
        next_pos = mask.sum(-1)                                              # [b] position of the next token
        alive = torch.ones(len(rows), dtype=torch.bool, device=device)
        for t in range(params.max_new_tokens):
            tok = _next_tokens(logits, params, keys, t)                      # [b]
            if tv is not None:
                tv[rows[alive], t] = version
            alive = alive & ~self._record(tok, rows, alive, t, eos, params, out, lengths, stopped, logits, blp)
            if t + 1 == params.max_new_tokens or not bool(alive.any()):
                return
            if (t + 1) % self.prune_every == 0 and not bool(alive.all()):
                keep = alive.nonzero()[:, 0]
                cache.batch_select_indices(keep)
                rows, keys, mask, next_pos, tok, alive = (x[keep] for x in (rows, keys, mask, next_pos, tok, alive))
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            if refresh is not None:
                refresh()                                                    # may load newer weights
            logits = self._forward(tok[:, None], mask, next_pos[:, None], cache)
            version, next_pos = self.version, next_pos + 1

    def _record(self, tok: Tensor, rows: Tensor, alive: Tensor, t: int, eos: Tensor, params: SamplingParams,
                out: Tensor, lengths: Tensor, stopped: Tensor, logits: Tensor, blp: Tensor | None) -> Tensor:
        """Write step t's tokens of the alive rows (and, with ``blp``, their log-probs under ``logits`` [b, V]);
        return Bool[b]: rows that end "stop" at this token."""
        live = alive.nonzero()[:, 0]
        live_rows, live_tok = rows[live], tok[live]
        out[live_rows, t] = live_tok
        if blp is not None:                                              # all rows are live unless prune_every > 1
            blp[live_rows, t] = token_logprobs(logits if len(live) == len(alive) else logits[live], live_tok)
        end = torch.isin(live_tok, eos)
        if params.stop:
            end |= self._stop_hits(out, live_rows, t, params.stop, skip=end)
        ended = live[end]
        lengths[rows[ended]] = t + 1
        stopped[rows[ended]] = True
        finished = torch.zeros_like(alive)
        finished[ended] = True
        return finished

    def _stop_hits(self, out: Tensor, live_rows: Tensor, t: int, stop: tuple[str, ...], skip: Tensor) -> Tensor:
        """Bool[len(live_rows)]: the row's text now contains a stop string (found by decoding only its tail).

        Checked every step, so an occurrence found now must end in token t (an earlier one would have stopped the
        row already). The tail of 4·max_len + 4 tokens covers any occurrence, a character taking at most 4 tokens.
        """
        width = 4 * max(len(s) for s in stop) + 4
        start = max(0, t + 1 - width)
        todo = (~skip).nonzero()[:, 0]
        hits = torch.zeros_like(skip)
        if len(todo) == 0:
            return hits
        tails = out[live_rows[todo], start:t + 1].tolist()
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        found = [any(s in text for s in stop) for text in texts]
        hits[todo] = torch.tensor(found, dtype=torch.bool, device=hits.device)
        return hits

"""Per-token log-probabilities of completions, without materialising [B, T, V] logits.

The policy-gradient losses need log π(y_t | x, y_<t) for every completion token: a gather from a
log-softmax over the vocabulary V. Computing ``model(...).logits`` first costs B·L·V floats for the
logits, as much again for the log-softmax, and the same in the backward pass (for SmolLM2, V = 49152:
1.3 GB at B = 16, L = 100 in fp32). Here the decoder body gives the final hidden states, only the rows
that predict a completion token are kept (N of them), and ``selective_log_softmax`` applies the output
head to chunks of rows: forward and backward hold one [chunk, V] fp32 block at a time, and nothing
[N, V]-sized is saved for backward (the backward recomputes each chunk's logits).

The G completions of a GRPO group share one prompt. ``completion_logprobs`` runs each distinct prompt of
a batch through the decoder once and lets its rows attend to that KV cache (gradients flow back through
it), so the prompt costs U·P tokens instead of B·P: with SmolLM2's chat-template prompts (~38 tokens against
~27 completion tokens) and G = 8 that halves the tokens a training step's decoder runs (docs/benchmarks.md).

Shapes: B rows, T padded completion length, H hidden size, V vocabulary, N = sum(lengths) selected rows,
U distinct prompts, P longest prompt.
"""
from __future__ import annotations

from typing import Any

import torch

from rlvr.attention import GQA_SDPA, checkpointing_in_training, gqa_attention

_UNSUPPORTED_HEAD_CONFIG = {"final_logit_softcapping": (None,), "logit_scale": (None, 1, 1.0),
                            "logits_scaling": (None, 1, 1.0)}
"""Config attributes that change logits after the linear head; the chunked head only does ``h·Wᵀ + b``."""


class _ChunkedSelectiveLogSoftmax(torch.autograd.Function):
    """log softmax(h·Wᵀ + b)[target] per row, computed chunk by chunk (see ``selective_log_softmax``).

    Forward, per chunk of rows c: z = h_c·Wᵀ + b (compute dtype, at least fp32), lse = logsumexp(z),
    logprob = z[target] − lse, entropy = lse − Σ softmax(z)·z. Saved for backward: h, W, b, targets and
    lse ([N]) only. Backward, per chunk: recompute z, dz = g·(onehot(target) − softmax(z)),
    grad_h = dz·W, grad_W += dzᵀ·h, grad_b += Σ dz (the last two only when needed).
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk_size: int, with_entropy: bool):
        compute = _compute_dtype(hidden, weight)
        n = hidden.shape[0]
        logprobs = hidden.new_empty(n, dtype=compute)
        lse = hidden.new_empty(n, dtype=compute)
        entropy = hidden.new_empty(n if with_entropy else 0, dtype=compute)
        with torch.autocast(device_type=hidden.device.type, enabled=False), torch.no_grad():
            w = weight.to(compute)
            b = bias.to(compute) if bias is not None else None
            for start in range(0, n, chunk_size):
                rows = slice(start, min(start + chunk_size, n))
                z = _chunk_logits(hidden[rows], w, b, compute)              # [c, V]
                lse[rows] = torch.logsumexp(z, dim=-1)
                logprobs[rows] = z.gather(1, targets[rows, None]).squeeze(1) - lse[rows]
                if with_entropy:
                    p = torch.exp(z - lse[rows, None])
                    entropy[rows] = lse[rows] - (p * z).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_logprobs: torch.Tensor, _grad_entropy: torch.Tensor | None):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        compute = lse.dtype
        n = hidden.shape[0]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=compute, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=compute, device=bias.device) if need_b else None
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            w = weight.to(compute)
            b = bias.to(compute) if bias is not None else None
            g_all = grad_logprobs.to(compute)
            for start in range(0, n, ctx.chunk_size):
                rows = slice(start, min(start + ctx.chunk_size, n))
                g = g_all[rows]
                dz = _chunk_logits(hidden[rows], w, b, compute)             # z, then reused in place
                dz.sub_(lse[rows, None]).exp_().mul_(-g[:, None])            # −g·softmax(z)
                dz.scatter_add_(1, targets[rows, None], g[:, None])         # + g·onehot(target)
                if need_h:
                    grad_h[rows] = (dz @ w).to(hidden.dtype)
                if need_w:
                    grad_w.addmm_(dz.T, hidden[rows].to(compute))
                if need_b:
                    grad_b.add_(dz.sum(0))
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 when an input is fp64 (gradcheck): half-precision inputs are upcast, never the reverse."""
    return torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, compute: torch.dtype) -> torch.Tensor:
    """[c, V] logits h·wᵀ + b in the compute dtype (``w``, ``b`` already in it)."""
    h = h.to(compute)
    return torch.addmm(b, h, w.T) if b is not None else h @ w.T


def selective_log_softmax(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                          bias: torch.Tensor | None = None, chunk_size: int = 1024,
                          with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(hidden·weightᵀ + bias)[n, targets[n]] for each row n, in chunks of rows.

    hidden: [N, H], any float dtype; weight: [V, H] (the output head); bias: [V] or None; targets: Long[N].
    Returns (logprobs [N], entropy [N] or None) in fp32 (fp64 if an input is fp64). Logits are computed in
    that dtype, also under autocast. Memory: O(chunk_size·V) in forward and backward; nothing of size N·V
    is stored. Differentiable w.r.t. hidden, weight and bias (first order). Entropy −Σ p log p is a metric:
    it carries no gradient.
    """
    _check_head_inputs(hidden, weight, targets, bias, chunk_size)
    logprobs, entropy = _ChunkedSelectiveLogSoftmax.apply(hidden, weight, bias, targets, int(chunk_size),
                                                          bool(with_entropy))
    return logprobs, (entropy if with_entropy else None)


def _check_head_inputs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       bias: torch.Tensor | None, chunk_size: int) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"selective_log_softmax: hidden must be [N, H] and weight [V, H], got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if not (hidden.is_floating_point() and weight.is_floating_point()):
        raise ValueError(f"selective_log_softmax: hidden and weight must be float, got {hidden.dtype}, {weight.dtype}")
    if targets.shape != (hidden.shape[0],) or targets.dtype != torch.long:
        raise ValueError(f"selective_log_softmax: targets must be Long[N={hidden.shape[0]}], got "
                         f"{targets.dtype}{list(targets.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"selective_log_softmax: bias must be [V={weight.shape[0]}], got {tuple(bias.shape)}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"selective_log_softmax: chunk_size must be a positive int, got {chunk_size!r}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= weight.shape[0]):
        bad = targets[(targets < 0) | (targets >= weight.shape[0])][0]
        raise ValueError(f"selective_log_softmax: target id {int(bad)} is outside the vocabulary [0, {weight.shape[0]})")


# ----------------------------------------------------------------------------------------------
# Completions of a causal LM
# ----------------------------------------------------------------------------------------------

def completion_logprobs(model: Any, prompt_ids: list[list[int]], completion_ids: torch.Tensor,
                        lengths: torch.Tensor, *, chunk_size: int = 1024, with_entropy: bool = False,
                        share_prompts: bool = True, pack: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(completion[b, t] | prompt[b], completion[b, :t]) for t < lengths[b]; exactly 0 elsewhere.

    model: a Hugging Face causal LM, or a PEFT model wrapping one (the LoRA layers sit inside the decoder
        layers, so running the base model's decoder applies them).
    prompt_ids: B lists of ids, each non-empty (the last prompt token predicts completion token 0).
    completion_ids: Long[B, T], right-padded; values at t >= lengths[b] are never read.
    lengths: Long[B], in [0, T].
    share_prompts: when some rows have the same prompt (a GRPO group), run each distinct prompt through the
        decoder once and let its rows attend to its KV cache (``shared_prompt_hidden``); the gradient of every
        row flows back through the shared cache. The values are those of the unshared path up to float
        rounding. Falls back to the unshared path when every prompt is distinct, under gradient
        checkpointing, or for caches that are not plain ``DynamicLayer``s (sliding windows).
    pack: padding-free: the sequences share packed rows of at most the longest one's length, position ids
        restarting at each one and attention kept within it (``packed_shared_hidden`` with shared prompts, else
        ``packed_hidden``); only a packed row's tail is padding. Same values as the padded path up to float
        rounding.
    Returns (logprobs, entropy or None), each Float32[B, T] (float64 for a float64 model), on the model's
    device. Unshared, the decoder runs on right-padded rows prompt + completion[:length] with an attention
    mask; the hidden state at position len(prompt) − 1 + t predicts completion token t. Gradients flow to
    every trainable parameter; entropy carries none. Works under torch.autocast: the head is computed in fp32.
    """
    decoder, head = decoder_and_head(model)
    device = head.weight.device
    B, T = check_batch(prompt_ids, completion_ids, lengths)
    lengths = lengths.to(device)
    completion_ids = completion_ids.to(device)
    t = torch.arange(T, device=device)
    rows, cols = (t[None, :] < lengths[:, None]).nonzero(as_tuple=True)      # [N] each, row-major
    with gqa_attention(decoder):
        selected = selected_hidden(decoder, prompt_ids, completion_ids, lengths, rows, cols,
                                   share_prompts=share_prompts, pack=pack)                # [N, H]
    lp, ent = selective_log_softmax(selected, head.weight, completion_ids[rows, cols],
                                    bias=head.bias, chunk_size=chunk_size, with_entropy=with_entropy)
    flat = rows * T + cols
    out_dtype = lp.dtype
    logprobs = torch.zeros(B * T, dtype=out_dtype, device=device).index_put((flat,), lp).view(B, T)
    entropy = None
    if with_entropy:
        entropy = torch.zeros(B * T, dtype=out_dtype, device=device).index_put((flat,), ent).view(B, T)
    return logprobs, entropy


def selected_hidden(decoder: torch.nn.Module, prompt_ids: list[list[int]], completion_ids: torch.Tensor,
                    lengths: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, *, share_prompts: bool,
                    pack: bool) -> torch.Tensor:
    """[N, H]: the final hidden state that predicts completion token ``cols[n]`` of row ``rows[n]``, by the path
    ``completion_logprobs`` describes (shared prompts and/or packing where they apply, else padded rows)."""
    unique, row_prompt = prompt_groups(prompt_ids) if share_prompts else (prompt_ids, [])
    shared = len(unique) < len(prompt_ids) and can_share_prompts(decoder)
    if pack and shared and can_mask(decoder):
        return packed_shared_hidden(decoder, unique, row_prompt, completion_ids, lengths)
    if pack:
        return packed_hidden(decoder, prompt_ids, completion_ids, lengths)
    if shared:
        return shared_prompt_hidden(decoder, unique, row_prompt, completion_ids, lengths)[rows, cols]
    input_ids, attention_mask, prompt_lens = pack_rows(prompt_ids, completion_ids, lengths, completion_ids.device)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return hidden[rows, prompt_lens[rows] - 1 + cols]


def prompt_groups(prompt_ids: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """(distinct prompts in order of first appearance, index into them of each row's prompt)."""
    index: dict[tuple[int, ...], int] = {}
    row_prompt = [index.setdefault(tuple(p), len(index)) for p in prompt_ids]
    return [list(p) for p in index], row_prompt


def can_share_prompts(decoder: torch.nn.Module) -> bool:
    """Whether ``shared_prompt_hidden`` applies: no gradient checkpointing in training (HF then turns the cache
    off) and a cache of plain full-attention ``DynamicLayer``s (no sliding window or other layer kind)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if checkpointing_in_training(decoder):
        return False
    try:
        layers = DynamicCache(config=decoder.config).layers
    except Exception:  # noqa: BLE001 - a model whose config DynamicCache cannot read: do not share
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def shared_prompt_hidden(decoder: torch.nn.Module, unique: list[list[int]], row_prompt: list[int],
                         completion_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Final hidden states [B, 1 + T', H] with T' = max(lengths) − 1 (at least 0): column 0 is the last prompt
    token's (it predicts completion token 0), column c ≥ 1 that of completion token c − 1 (predicting token c).

    Two decoder passes. 1. The U distinct prompts, right-padded to P = max prompt length, fill a KV cache
    [U, kv, P, d] per layer. 2. The cache is indexed to the B rows (``row_prompt``, differentiable) and the
    completions' first T' tokens run on it at positions len(prompt) + t, with the attention mask
    [prompt mask of the row | t < lengths]. Rows see exactly the keys and values of the unshared path, so the
    values match it up to float rounding; the prompt's share of the work drops from B·P to U·P tokens.
    """
    from transformers import DynamicCache

    device = completion_ids.device
    U, B = len(unique), len(row_prompt)
    lens = torch.tensor([len(p) for p in unique], dtype=torch.long, device=device)
    P = int(lens.max())
    ids = torch.zeros(U, P, dtype=torch.long, device=device)
    for u, p in enumerate(unique):
        ids[u, :len(p)] = torch.as_tensor(p, dtype=torch.long, device=device)
    mask = (torch.arange(P, device=device)[None, :] < lens[:, None]).long()                  # [U, P]
    positions = torch.arange(P, device=device)[None, :].expand(U, P)
    cache = DynamicCache(config=decoder.config)
    h_prompt = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                       use_cache=True).last_hidden_state                                   # [U, P, H]
    rp = torch.as_tensor(row_prompt, dtype=torch.long, device=device)                      # [B]
    first = h_prompt[rp, lens[rp] - 1][:, None]                                            # [B, 1, H]
    Tc = max(int(lengths.max()) - 1, 0) if B else 0
    if Tc == 0:
        return first
    cache.batch_select_indices(rp)
    t = torch.arange(Tc, device=device)
    real = t[None, :] < lengths[:, None]                                                   # [B, Tc]
    comp_ids = torch.where(real, completion_ids[:, :Tc], 0)
    comp_mask = torch.cat([mask[rp], real.long()], dim=1)                                   # [B, P + Tc]
    h_comp = decoder(input_ids=comp_ids, attention_mask=comp_mask, position_ids=lens[rp][:, None] + t[None, :],
                     past_key_values=cache, use_cache=True).last_hidden_state              # [B, Tc, H]
    return torch.cat([first, h_comp], dim=1)


# ----------------------------------------------------------------------------------------------
# Padding-free packing
# ----------------------------------------------------------------------------------------------

_MASKABLE = ("sdpa", GQA_SDPA, "eager")
"""Attention implementations that take a custom 4D mask [1, 1, q, k] (bool for SDPA, additive for eager)."""


def can_mask(decoder: torch.nn.Module) -> bool:
    """Whether the decoder's attention takes the custom 4D masks of ``packed_shared_hidden`` (SDPA or eager; not
    flash-attention's varlen kernels, which take only sequence boundaries)."""
    return getattr(decoder.config, "_attn_implementation", None) in _MASKABLE


def pack_into_rows(sizes: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``sizes`` grouped into rows of at most ``capacity`` (first-fit decreasing, ties by index; an item
    larger than ``capacity`` gets a row of its own). Packed sequences and packed token-budget micro-batches
    (``trainer.microbatch.pack``) are both cut this way."""
    rows: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        k = next((k for k, u in enumerate(used) if u + sizes[i] <= capacity), len(rows))
        if k == len(rows):
            rows.append([])
            used.append(0)
        rows[k].append(i)
        used[k] += sizes[i]
    return rows


def _layout(sizes: list[int], one_row: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(row[i], offset[i]) of each item in a packed [R, L] layout, R, L: one row (flash attention's varlen kernels
    take any length) or rows of at most the longest item's size, so that attention, whose cost grows with a row's
    length squared under a dense mask, costs no more per row than the longest sequence's padded row."""
    rows = [[i for i, n in enumerate(sizes) if n > 0]] if one_row else pack_into_rows(sizes, max(sizes, default=0))
    row, offset = torch.zeros(len(sizes), dtype=torch.long), torch.zeros(len(sizes), dtype=torch.long)
    width = 0
    for r, items in enumerate(rows):
        o = 0
        for i in items:
            row[i], offset[i], o = r, o, o + sizes[i]
        width = max(width, o)
    return row.to(device), offset.to(device), max(len(rows), 1), max(width, 1)


def _segments(row: torch.Tensor, offset: torch.Tensor, sizes: torch.Tensor, R: int, L: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(item, t): the [N] item and in-item position of every packed token, row-major; (seg, pos): [R, L] maps of
    the item (−1 on padding) and in-item position (0 on padding)."""
    t = torch.arange(int(sizes.max()) if len(sizes) else 0, device=row.device)
    item, tt = (t[None, :] < sizes[:, None]).nonzero(as_tuple=True)
    seg = torch.full((R, L), -1, dtype=torch.long, device=row.device)
    pos = torch.zeros(R, L, dtype=torch.long, device=row.device)
    seg[row[item], offset[item] + tt] = item
    pos[row[item], offset[item] + tt] = tt
    return item, tt, seg, pos


def _within(seg: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Bool [R, L, L]: query q may attend key k when both belong to the same item and k is not after q; a padding
    query attends to itself only (a row of a softmax may not be empty: its NaN would reach the gradients)."""
    L = seg.shape[1]
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0) & (pos[:, None, :] <= pos[:, :, None])
    return same | torch.eye(L, dtype=torch.bool, device=seg.device)


def packed_hidden(decoder: torch.nn.Module, prompt_ids: list[list[int]], completion_ids: torch.Tensor,
                  lengths: torch.Tensor) -> torch.Tensor:
    """[N, H], row-major over (row b, token t < lengths[b]): one decoder pass over the sequences prompt[b] +
    completion[b, :lengths[b] − 1] laid back to back in packed rows, position ids restarting at 0 for each.

    With SDPA or eager attention the sequences go into rows of at most the longest one's length (first-fit
    decreasing) with a block-diagonal causal 4D mask. With flash attention (no custom masks) they share one row
    with no mask: transformers finds the boundaries from the restarting position ids
    (``masking_utils.find_packed_sequence_indices``) and runs its varlen kernel. Either way no token attends across
    sequences; the hidden state at offset len(prompt[b]) − 1 + t of sequence b predicts completion token t.
    """
    device = completion_ids.device
    plen = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long, device=device)           # [B]
    sizes = plen + (lengths.to(device) - 1).clamp(min=0)                                        # [B]
    row, offset, R, L = _layout(sizes.tolist(), not can_mask(decoder), device)
    item, tt, seg, pos = _segments(row, offset, sizes, R, L)
    flat = [torch.cat([torch.as_tensor(p, dtype=torch.long, device=device), completion_ids[b, :max(int(n) - 1, 0)]])
            for b, (p, n) in enumerate(zip(prompt_ids, lengths.tolist()))]
    ids = torch.zeros(R, L, dtype=torch.long, device=device)
    ids[row[item], offset[item] + tt] = torch.cat(flat) if flat else ids.new_zeros(0)
    mask = _mask4d(decoder, _within(seg, pos)) if can_mask(decoder) else None
    hidden = decoder(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).last_hidden_state
    t = torch.arange(completion_ids.shape[1], device=device)
    rows, cols = (t[None, :] < lengths[:, None]).nonzero(as_tuple=True)
    return hidden[row[rows], offset[rows] + plen[rows] - 1 + cols]


def packed_shared_hidden(decoder: torch.nn.Module, unique: list[list[int]], row_prompt: list[int],
                         completion_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[N, H], row-major over (row b, token t < lengths[b]): ``shared_prompt_hidden`` without padding.

    Pass 1: the U distinct prompts, packed into rows of at most the longest one's length (positions restarting,
    each attending causally within itself), fill a KV cache. Pass 2: every row's completion[:lengths − 1], packed
    the same way, at positions len(prompt) + t; each packed row's cache holds the keys of just the prompts its
    completions continue (gathered from pass 1), and each token attends to its own prompt's keys and causally to
    its own completion's. Token 0 of a row is predicted by its prompt's last hidden state, token t ≥ 1 by
    completion token t − 1's.
    """
    from transformers import DynamicCache

    device = completion_ids.device
    plen = torch.tensor([len(p) for p in unique], dtype=torch.long, device=device)          # [U]
    prow, poff, R1, L1 = _layout(plen.tolist(), False, device)
    pitem, pt, pseg, ppos = _segments(prow, poff, plen, R1, L1)
    ids = torch.zeros(R1, L1, dtype=torch.long, device=device)
    ids[prow[pitem], poff[pitem] + pt] = torch.cat([torch.as_tensor(p, dtype=torch.long, device=device)
                                                    for p in unique])
    cache = DynamicCache(config=decoder.config)
    h_prompt = decoder(input_ids=ids, position_ids=ppos, attention_mask=_mask4d(decoder, _within(pseg, ppos)),
                       past_key_values=cache, use_cache=True).last_hidden_state            # [R1, L1, H]
    rp = torch.as_tensor(row_prompt, dtype=torch.long, device=device)                     # [B]
    first = h_prompt[prow[rp], poff[rp] + plen[rp] - 1]                                    # [B, H]
    sizes = (lengths.to(device) - 1).clamp(min=0)                                          # [B] completion inputs
    if int(sizes.sum()):
        row, offset, R, L = _layout(sizes.tolist(), False, device)
        crow, ct, seg, pos = _segments(row, offset, sizes, R, L)                           # crow, ct row-major
        comp = torch.zeros(R, L, dtype=torch.long, device=device)
        comp[row[crow], offset[crow] + ct] = completion_ids[crow, ct]
        own = torch.where(seg >= 0, rp[seg.clamp(min=0)], -1)                              # [R, L] prompt id
        keys, key_prompt = _prompt_keys(own, plen, prow * L1 + poff)                       # [R, K] each
        for layer in cache.layers:                  # [R1, kv, L1, d] -> [R, kv, K, d], differentiable
            layer.keys, layer.values = (_gather_positions(x, keys) for x in (layer.keys, layer.values))
        allowed = torch.cat([(key_prompt[:, None, :] == own[:, :, None]) & (key_prompt[:, None, :] >= 0),
                             _within(seg, pos)], dim=2)                                    # [R, L, K + L]
        h_comp = decoder(input_ids=comp, position_ids=torch.where(seg >= 0, plen[own.clamp(min=0)] + pos, 0),
                         attention_mask=_mask4d(decoder, allowed), past_key_values=cache,
                         use_cache=True).last_hidden_state                                 # [R, L, H]
        first = torch.cat([first, h_comp[row[crow], offset[crow] + ct]])                   # [B + C, H]
    t = torch.arange(completion_ids.shape[1], device=device)
    rows, cols = (t[None, :] < lengths[:, None]).nonzero(as_tuple=True)
    before = torch.cumsum(sizes, 0) - sizes                                                # [B] first index in C
    return first[torch.where(cols == 0, rows, len(rp) + before[rows] + cols - 1)]


def _prompt_keys(own: torch.Tensor, plen: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each packed row of ``own`` ([R, L]: the prompt id of each token, −1 on padding), the flat pass-1
    positions of the keys of the prompts it needs, back to back ([R, K], 0 past the end), and whose they are
    ([R, K], −1 past the end); ``start[u]``: prompt u's first flat position."""
    need = [sorted(set(r.tolist()) - {-1}) for r in own]
    K = max(max((sum(int(plen[u]) for u in us) for us in need), default=0), 1)
    keys = torch.zeros(len(need), K, dtype=torch.long, device=own.device)
    key_prompt = torch.full((len(need), K), -1, dtype=torch.long, device=own.device)
    for r, us in enumerate(need):
        o = 0
        for u in us:
            n = int(plen[u])
            keys[r, o:o + n] = start[u] + torch.arange(n, device=own.device)
            key_prompt[r, o:o + n] = u
            o += n
    return keys, key_prompt


def _gather_positions(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [R1, kv, L1, d] viewed as R1·L1 positions -> [R, kv, K, d] at the flat positions ``index`` [R, K]."""
    R1, kv, L1, d = x.shape
    return x.transpose(1, 2).reshape(R1 * L1, kv, d)[index].transpose(1, 2)


def _mask4d(decoder: torch.nn.Module, allowed: torch.Tensor) -> torch.Tensor:
    """[R, 1, q, k] from a bool [q, k] (R = 1) or [R, q, k] (True: may attend): bool for SDPA, additive (0 / dtype
    min) for eager."""
    allowed = (allowed if allowed.dim() == 3 else allowed[None])[:, None]
    if decoder.config._attn_implementation != "eager":
        return allowed
    dtype = next(decoder.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def decoder_and_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """(decoder body returning ``last_hidden_state``, linear output head) of a causal LM or PEFT model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder = getattr(base, "get_decoder", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    decoder = get_decoder() if get_decoder is not None else None
    if decoder is None or decoder is base or head is None:
        raise ValueError(f"completion_logprobs: {type(base).__name__} is not a causal LM with a decoder body "
                         "and an output head")
    if hasattr(head, "base_layer") or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise ValueError(f"completion_logprobs: the output head is a {type(head).__name__}, not a plain linear "
                         "layer (LoRA on lm_head is not supported)")
    config = getattr(base, "config", None)
    for attr, neutral in _UNSUPPORTED_HEAD_CONFIG.items():
        value = getattr(config, attr, None)
        if value not in neutral:
            raise ValueError(f"completion_logprobs: {type(base).__name__} has {attr}={value!r}, which changes "
                             "logits after the linear head; not supported")
    return decoder, head


def check_batch(prompt_ids: list[list[int]], completion_ids: torch.Tensor, lengths: torch.Tensor) -> tuple[int, int]:
    """(B, T) after checking the shapes and ranges that ``completion_logprobs`` relies on."""
    if completion_ids.dim() != 2 or completion_ids.dtype != torch.long:
        raise ValueError(f"completion_ids must be Long[B, T], got {completion_ids.dtype}{list(completion_ids.shape)}")
    B, T = completion_ids.shape
    if len(prompt_ids) != B:
        raise ValueError(f"prompt_ids has {len(prompt_ids)} rows but completion_ids has B={B}")
    if lengths.shape != (B,) or lengths.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"lengths must be Long[B={B}], got {lengths.dtype}{list(lengths.shape)}")
    if B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ValueError(f"lengths must lie in [0, T={T}], got min {int(lengths.min())}, max {int(lengths.max())}")
    empty = [b for b, p in enumerate(prompt_ids) if len(p) == 0]
    if empty:
        raise ValueError(f"prompt_ids rows {empty[:5]} are empty: a completion needs at least one prompt token")
    return B, T


def pack_rows(prompt_ids: list[list[int]], completion_ids: torch.Tensor, lengths: torch.Tensor,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded rows prompt + completion[:length]: (input_ids [B, L], attention_mask [B, L], prompt_lens [B]).

    Padding uses id 0 under a zero attention mask; right padding keeps position ids 0..len−1 for real tokens.
    """
    B = len(prompt_ids)
    prompt_lens = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long, device=device)
    total = prompt_lens + lengths
    L = int(total.max()) if B else 0
    input_ids = torch.zeros(B, L, dtype=torch.long, device=device)
    for b, (prompt, n) in enumerate(zip(prompt_ids, lengths.tolist())):
        p = len(prompt)
        input_ids[b, :p] = torch.as_tensor(prompt, dtype=torch.long, device=device)
        input_ids[b, p:p + n] = completion_ids[b, :n]
    attention_mask = (torch.arange(L, device=device)[None, :] < total[:, None]).long()
    return input_ids, attention_mask, prompt_lens

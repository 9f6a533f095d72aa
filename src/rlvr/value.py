"""The value model (critic) of PPO: a scalar head on its own copy of the policy's backbone.

V(s_t) is read from the hidden state that predicts completion token t, i.e. the state after the prompt
and the first t completion tokens (position len(prompt) − 1 + t of the packed row), the same alignment
as ``rlvr.logprobs.completion_logprobs``. Shapes: B rows, T padded completion length, H hidden size.

Why a separate copy, not a second head on the policy: a shared trunk makes the value loss's gradients
move the policy's features (and the policy loss move the critic's); PPO implementations for LLMs
(verl, OpenRLHF) keep the critic apart for this reason, and a separate optimiser keeps the two
learning rates independent. The cost is a second set of weights and a second forward pass per batch:
for SmolLM2-135M that is 0.5 GB in fp32, affordable on one CPU. Under LoRA the critic gets its own
adapters on its own frozen copy of the base weights, plus a fully trained head.

The head starts at zero (weight and bias), so every initial value is exactly 0: with γ = λ = 1 the first
advantages are the outcome rewards themselves, and nothing random enters the critic at step 0.
"""
from __future__ import annotations

from typing import Any

import torch

from rlvr.attention import gqa_attention
from rlvr.logprobs import check_batch, decoder_and_head, selected_hidden


class ValueModel(torch.nn.Module):
    """V(s_t) for every completion token: ``lm``'s decoder body, then ``head`` (a Linear H -> 1).

    lm: a Hugging Face causal LM or a PEFT model wrapping one; its output head is never used.
    share_prompts, pack: how the decoder pass runs, as for the policy's log-probs (``model.share_prompts``,
        ``model.pack_sequences``; ``rlvr.logprobs.selected_hidden``): each distinct prompt once, and/or
        padding-free packed rows. Same values as the padded pass up to float rounding.
    """

    def __init__(self, lm: torch.nn.Module, *, share_prompts: bool = False, pack: bool = False) -> None:
        super().__init__()
        self.lm, self.share_prompts, self.pack = lm, share_prompts, pack
        _, out = decoder_and_head(lm)
        hidden = out.weight.shape[1]
        self.head = torch.nn.Linear(hidden, 1, dtype=torch.float32, device=out.weight.device)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, prompt_ids: list[list[int]], completion_ids: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
        return completion_values(self, prompt_ids, completion_ids, lengths)


def completion_values(critic: ValueModel, prompt_ids: list[list[int]], completion_ids: torch.Tensor,
                      lengths: torch.Tensor) -> torch.Tensor:
    """Float32[B, T]: V(s_t) for t < lengths[b], exactly 0 elsewhere (gradients flow to the critic).

    prompt_ids: B non-empty lists; completion_ids: Long[B, T] right-padded; lengths: Long[B] in [0, T].
    The decoder pass is the policy log-probs' (``rlvr.logprobs.selected_hidden``, with the critic's
    ``share_prompts`` and ``pack``); the head runs in fp32 on the selected hidden states only (N = Σ lengths
    rows, not B·L).
    """
    decoder, _ = decoder_and_head(critic.lm)
    device = critic.head.weight.device
    B, T = check_batch(prompt_ids, completion_ids, lengths)
    lengths = lengths.to(device)
    rows, cols = (torch.arange(T, device=device)[None, :] < lengths[:, None]).nonzero(as_tuple=True)  # row-major
    with gqa_attention(decoder):
        hidden = selected_hidden(decoder, prompt_ids, completion_ids.to(device), lengths, rows, cols,
                                 share_prompts=critic.share_prompts, pack=critic.pack)           # [N, H]
    with torch.autocast(device_type=device.type, enabled=False):  # the head stays fp32 under autocast
        v = critic.head(hidden.float()).squeeze(-1)
    return torch.zeros(B * T, dtype=v.dtype, device=device).index_put((rows * T + cols,), v).view(B, T)


def build_value_model(lm: torch.nn.Module, *, lora: dict[str, Any] | None = None, share_prompts: bool = False,
                      pack: bool = False) -> ValueModel:
    """A critic on ``lm`` (a freshly loaded copy of the policy's base model, not the policy itself).

    lora: ``rlvr.models.apply_lora`` keyword arguments to train adapters instead of every weight; the
    head is always fully trained. share_prompts, pack: the decoder pass (``ValueModel``). Returns the critic
    in train mode.
    """
    from rlvr.models import apply_lora

    if lora is not None:
        lm = apply_lora(lm, **lora)
    else:
        for p in lm.parameters():
            p.requires_grad_(True)
    critic = ValueModel(lm, share_prompts=share_prompts, pack=pack)
    critic.head.requires_grad_(True)
    return critic.train()

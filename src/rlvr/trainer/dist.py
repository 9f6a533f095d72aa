"""Data parallelism for the learner: N ranks train one policy on disjoint rows of every optimiser step.

The contract that keeps an N-rank update equal to the one-process update (docs/algorithms.md §8):

1. **One normaliser.** Every rank holds the whole batch, so each optimiser step's ``loss_normalizer`` (and the
   group token counts of ``group_mean_token_mean``) is computed from all of the step's rows, identically on every
   rank; each rank back-propagates its own rows' loss divided by that global N.
2. **Gradients are summed across ranks, never divided twice.** FSDP2 and DDP average gradients over ranks; each
   rank's loss is multiplied by the world size before ``backward`` so that the average is the sum.
3. **Every rank runs the same collectives.** A rank's share of a step is split into micro-batches
   (``rlvr.trainer.microbatch``) and padded with empty ones to the largest count of any rank (an empty one runs a row of the batch with weight 0); a non-finite
   loss is back-propagated like any other (its NaN reaches every rank through the gradient reduction) and the
   step is skipped on all ranks together.
4. **Statistics are global.** Token-weighted sums and counts, and the step's loss, are summed over ranks.

Ranks: torchrun (``torch.distributed.run``) starts them and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
in the environment; ``init`` joins that group (gloo on CPU, NCCL on CUDA). Without it the world has one rank and
every function here is a no-op: a one-process run takes none of these paths.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from rlvr.logprobs import completion_logprobs, decoder_and_head

Tensor = torch.Tensor

__all__ = ["World", "LogProbs", "init", "shutdown", "broadcast_object", "all_sum", "all_true", "merge_sums",
           "wrap", "full_trainable_state", "launched_by_torchrun"]

STRATEGIES = ("fsdp2", "ddp")


@dataclass(frozen=True)
class World:
    """This process's place among the learner ranks: ``rank`` of ``size`` (``local_rank`` on its machine), and how
    the policy is distributed (``strategy``: fsdp2 or ddp; ignored at size 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    strategy: str = "fsdp2"

    @property
    def main(self) -> bool:
        """Rank 0: samples, scores, logs, evaluates and writes the run's files."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (it set WORLD_SIZE and RANK)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init(strategy: str, device: torch.device) -> World:
    """Join the process group torchrun described in the environment; World() when there is none (one rank).
    The backend is NCCL when the policy runs on CUDA (each rank then takes GPU ``LOCAL_RANK``), gloo otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(strategy=strategy)
    if strategy not in STRATEGIES:
        raise ValueError(f"dist.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not tdist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local)
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank=rank, size=size, local_rank=local, strategy=strategy)


def shutdown(world: World) -> None:
    """Leave the process group once every rank is done (drop DDP-wrapped modules first: their destructor needs it)."""
    if world.parallel and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# Collectives (no-ops on one rank)
# ----------------------------------------------------------------------------------------------

def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank (pickled over the process group: control data between the ranks of one
    job, never weights)."""
    if not world.parallel:
        return obj
    box = [obj if world.main else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(x: Tensor, world: World) -> Tensor:
    """``x`` summed over ranks (in place; CPU tensors on gloo, the rank's device on NCCL)."""
    if world.parallel:
        device = torch.device("cuda", world.local_rank) if tdist.get_backend() == "nccl" else x.device
        y = x.to(device)
        tdist.all_reduce(y)
        x.copy_(y)
    return x


def all_true(flag: bool, world: World) -> bool:
    """Whether ``flag`` holds on every rank."""
    if not world.parallel:
        return flag
    return bool(all_sum(torch.tensor([0.0 if flag else 1.0], dtype=torch.float64), world).item() == 0)


def merge_sums(sums: dict[str, float], counts: dict[str, int], world: World) -> tuple[dict[str, float],
                                                                                      dict[str, int]]:
    """Per-key sums and counts added over ranks (a key one rank never saw counts 0 there)."""
    if not world.parallel:
        return sums, counts
    gathered: list[Any] = [None] * world.size
    tdist.all_gather_object(gathered, (sums, counts))
    out_s: dict[str, float] = {}
    out_c: dict[str, int] = {}
    for s, c in gathered:
        for k in s:
            out_s[k] = out_s.get(k, 0.0) + s[k]
            out_c[k] = out_c.get(k, 0) + c[k]
    return out_s, out_c


# ----------------------------------------------------------------------------------------------
# The policy across ranks
# ----------------------------------------------------------------------------------------------

class LogProbs(torch.nn.Module):
    """``completion_logprobs(model, ...)`` as a module's forward: the module FSDP2 and DDP wrap (their hooks run on
    the root's forward, which a direct call into the decoder would skip)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, prompt_ids: list[list[int]], completion_ids: Tensor, lengths: Tensor, *, chunk_size: int = 1024,
                with_entropy: bool = False, share_prompts: bool = True, pack: bool = False
                ) -> tuple[Tensor, Tensor | None]:
        lp, ent = completion_logprobs(self.model, prompt_ids, completion_ids, lengths, chunk_size=chunk_size,
                                      with_entropy=with_entropy, share_prompts=share_prompts, pack=pack)
        return lp.clone(), ent    # not a view: FSDP2 hooks its backward on the output


def wrap(module: torch.nn.Module, model: torch.nn.Module, world: World) -> torch.nn.Module:
    """``module`` (whose forward runs ``model``) distributed over the ranks: FSDP2 shards each decoder layer and
    the rest (embeddings, final norm, head) at the root; DDP replicates it. Unchanged on one rank."""
    if not world.parallel:
        return module
    if world.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)
    from torch.distributed.fsdp import fully_shard

    decoder, _ = decoder_and_head(model)
    for layer in decoder.layers:
        fully_shard(layer)
    fully_shard(module)
    return module


def full_trainable_state(model: torch.nn.Module, world: World) -> dict[str, Tensor]:
    """``{name: full CPU copy}`` of every trainable parameter (adapters only under LoRA), the names of
    ``model.named_parameters()``; under FSDP2 each sharded parameter is all-gathered, so every rank must call this."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[name] = full.detach().to("cpu", copy=True).contiguous()
    return out

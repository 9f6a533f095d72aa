"""Runs functions as N learner ranks on this machine (gloo, CPU), for tests/test_dist.py.

``run_ranks(fn, world, *args)`` spawns ``world`` processes, each with RANK / WORLD_SIZE set as torchrun would and
already in a gloo process group (a file rendezvous), and calls ``fn(*args)`` in each; a rank that raises fails the call. The checks leave the process
group to the process's exit (destroying it while a DDP module is still alive can hang in DDP's destructor). The checks themselves live
here too (they must be importable by the spawned processes): each compares a data-parallel update with the
one-process update on the same fp64 tiny Qwen2 and writes what it measured to ``out/<name>.json`` on rank 0.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

from rlvr import advantages, kl, losses
from rlvr.models import tiny_random
from rlvr.rewards.scoring import Scores
from rlvr.trainer import dist, microbatch
from rlvr.trainer.algorithm import Algorithm
from rlvr.trainer.batch import Batch
from rlvr.trainer.step import Policy, Schedule, update_policy
from rlvr.types import Problem, Rollout

F64 = torch.float64


def _entry(rank: int, world: int, store: str, module: str, name: str, args: tuple) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import importlib

    import torch.distributed as tdist

    # A file rendezvous: no port to race for with whatever else the test run has listening.
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    getattr(importlib.import_module(module), name)(*args)


def run_ranks(fn, world: int, *args) -> None:
    """``fn(*args)`` on ``world`` spawned ranks, each already in a gloo process group (``dist.init`` joins it)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_entry, args=(world, os.path.join(tmp, "store"), fn.__module__, fn.__name__, args), nprocs=world,
                 join=True)


# ----------------------------------------------------------------------------------------------
# A batch with ragged lengths and uneven rows per rank; the model; one update
# ----------------------------------------------------------------------------------------------

def make_batch(seed: int = 0, P: int = 5, G: int = 2, T: int = 9) -> Batch:
    """P prompts × G rows, prompt-major; completion lengths from 1 to T, longer in the first rows, so that two ranks
    (2 and 3 groups) hold different numbers of rows and of tokens."""
    g = torch.Generator().manual_seed(seed)
    B = P * G
    prompts = [torch.randint(3, 99, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
               for _ in range(P)]
    lengths = torch.tensor([T - (b * 7) % T if b < B // 2 else 1 + b % 3 for b in range(B)])
    ro = Rollout(prompt_ids=[prompts[b // G] for b in range(B)], completion_ids=torch.randint(3, 99, (B, T), generator=g),
                 lengths=lengths, finish_reasons=["stop"] * B, texts=[""] * B)
    adv = torch.randn(B, generator=g)
    z = torch.zeros(B, dtype=F64)
    scores = Scores(total=z, accuracy=z, format=z, overlong=z, reasons=[""] * B, extracted=[None] * B)
    problems = [Problem(prompt=f"p{i}", answer="1", verifier="int", id=f"x/{i}") for i in range(P)]
    behavior = torch.where(ro.loss_mask, -1.0 - 0.1 * torch.rand(B, T, generator=g), 0.0)
    ro.behavior_logprobs = behavior
    return Batch(problems=problems, rollout=ro, scores=scores, advantages=torch.where(ro.loss_mask, adv[:, None], 0.0))


def make_policy(world: dist.World, *, lr: float = 0.1, adam: bool = False, strategy_wrap: bool = True,
                pack: bool = False) -> Policy:
    model, _ = tiny_random(0)
    model = model.to(F64).train()
    for p in model.parameters():
        p.requires_grad_(True)
    module = dist.wrap(dist.LogProbs(model), model, world) if strategy_wrap else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3) if adam else torch.optim.SGD(params, lr=lr)
    return Policy(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), chunk_size=64,
                  share_prompts=False, pack=pack, module=module, world=world)


def algorithm(loss: str, aggregation: str, kl_coef: float = 0.0) -> Algorithm:
    return Algorithm(advantage=advantages.spec("grpo"), loss=losses.spec(loss), aggregation=aggregation,
                     kl=kl.get("k3"), kl_coef=kl_coef, max_tokens=9)


CASES = [  # (loss, aggregation, num_iterations, mini_batches, max_tokens_per_micro_batch; "p20": 20, packed)
    ("reinforce", "token_mean", 1, 1, None), ("ppo_clip", "seq_mean_token_mean", 2, 2, None),
    ("reinforce", "seq_mean_token_sum", 1, 1, None), ("ppo_clip", "seq_mean_token_sum_norm", 1, 2, None),
    ("reinforce", "group_mean_token_mean", 2, 1, None), ("decoupled_ppo", "token_mean", 2, 1, None),
    ("ppo_clip", "token_mean", 2, 2, 24), ("reinforce", "group_mean_token_mean", 1, 1, 20),
    ("ppo_clip", "seq_mean_token_mean", 2, 1, "p20"),
]


def _weights(policy: Policy) -> dict[str, torch.Tensor]:
    return dist.full_trainable_state(policy.model, policy.world)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


_REAL_NORMALIZER = losses.loss_normalizer


def _naive_normalizer(world: dist.World):
    """The per-rank normaliser (each rank's own rows only) that data-parallel trainers keep shipping."""
    real = _REAL_NORMALIZER

    def naive(mask, mode, **kw):
        keep = microbatch.rank_rows(torch.arange(mask.shape[0]), world)
        gt = kw.pop("group_tokens", None)
        return real(mask[keep], mode, group_tokens=gt[keep] if gt is not None else None, **kw)
    return naive


def update_checks(out: str, strategy: str) -> None:
    """For each case: the DP update's weights and metrics against the one-process update (which every rank also
    computes on its own); then the naive per-rank normaliser on the same update."""
    world = dist.init(strategy, torch.device("cpu"))
    report = {}
    for loss, mode, iters, minis, tokens in CASES:
        packed = isinstance(tokens, str)
        schedule = Schedule(iters, minis, micro_batch_size=2, max_grad_norm=0.0, seed=3,
                            max_tokens_per_micro_batch=int(tokens[1:]) if packed else tokens, packed=packed)
        ref = make_policy(dist.World(), strategy_wrap=False)
        m_ref = update_policy(ref, make_batch(), algorithm(loss, mode), schedule, step=0)
        dp = make_policy(world, pack=packed)
        m_dp = update_policy(dp, make_batch(), algorithm(loss, mode), schedule, step=0)
        w_ref, w_dp = _weights(ref), _weights(dp)
        start = _weights(make_policy(dist.World(), strategy_wrap=False))
        moved = max(float((w_ref[k] - v).abs().max()) for k, v in start.items())
        losses.loss_normalizer = _naive_normalizer(world)
        try:
            naive = make_policy(world, pack=packed)
            update_policy(naive, make_batch(), algorithm(loss, mode), schedule, step=0)
        finally:
            losses.loss_normalizer = _REAL_NORMALIZER
        keys = ("loss/policy", "train/grad_norm", "policy/entropy", "loss_stats/ratio")
        report[f"{loss}/{mode}/{tokens}"] = {
            "weights": _max_diff(w_ref, w_dp), "moved": moved, "naive_weights": _max_diff(w_ref, _weights(naive)),
            "metrics": {k: [m_ref.get(k), m_dp.get(k)] for k in keys if k in m_ref},
            "skipped": [m_ref["train/skipped_steps"], m_dp["train/skipped_steps"]]}
    _write(out, "update", report, world)


def nan_check(out: str, strategy: str) -> None:
    """A non-finite loss on rank 1 only (its micro-batch losses × NaN): both ranks skip the step and keep their
    weights, and the next step trains."""
    world = dist.init(strategy, torch.device("cpu"))
    policy = make_policy(world)
    before = _weights(policy)
    real = losses.aggregate
    if world.rank == 1:
        losses.aggregate = lambda *a, **kw: real(*a, **kw) * float("nan")
    try:
        m = update_policy(policy, make_batch(), algorithm("reinforce", "token_mean"), Schedule(micro_batch_size=2),
                          step=0)
    finally:
        losses.aggregate = real
    after = _weights(policy)
    m2 = update_policy(policy, make_batch(1), algorithm("reinforce", "token_mean"), Schedule(micro_batch_size=2), step=1)
    gathered = [None] * world.size
    import torch.distributed as tdist

    tdist.all_gather_object(gathered, [m["train/skipped_steps"], _max_diff(before, after), m2["train/skipped_steps"]])
    _write(out, "nan", {"per_rank": gathered}, world)


def checkpoint_checks(out: str, strategy: str) -> None:
    """Sharded (DCP) save after one DP update, and a one-process checkpoint loaded into the ranks: the weights and
    the continuation of training (a second update) equal what one process gets."""
    from rlvr.trainer.checkpoint import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint

    world = dist.init(strategy, torch.device("cpu"))
    algo, schedule = algorithm("ppo_clip", "token_mean"), Schedule(2, 1, micro_batch_size=2, max_grad_norm=1.0)
    policy = make_policy(world, adam=True)
    update_policy(policy, make_batch(0), algo, schedule, step=0)
    save_checkpoint(Path(out) / "ckpt2", policy.model, policy.optimizer, policy.scheduler, TrainState(1, 0, 1),
                    world=world)
    update_policy(policy, make_batch(1), algo, schedule, step=1)
    continued = _weights(policy)                                  # the uninterrupted run, 2 ranks
    fresh = make_policy(world, adam=True)                         # 1 -> 2: the one-process checkpoint, loaded here
    load_checkpoint(latest_checkpoint(Path(out) / "ckpt1"), fresh.model, fresh.optimizer, fresh.scheduler,
                    world=world)
    loaded = _weights(fresh)
    update_policy(fresh, make_batch(1), algo, schedule, step=1)
    if world.main:
        from safetensors.torch import save_file
        save_file({f"continued.{k}": v for k, v in continued.items()} |
                  {f"loaded_from_1.{k}": v for k, v in loaded.items()} |
                  {f"continued_from_1.{k}": v for k, v in _weights(fresh).items()}, str(Path(out) / "ranks.safetensors"))
    else:
        _weights(fresh)


def _write(out: str, name: str, report: dict, world: dist.World) -> None:
    if world.main:
        (Path(out) / f"{name}.json").write_text(json.dumps(report, indent=1))

"""The data-parallel learner on CPU: 2 gloo ranks, an fp64 tiny Qwen2, ragged lengths and uneven rows per rank.

Every check compares the N-rank result with the one-process result on the same batch (tests/dist_harness.py runs
the ranks): the update's weights and metrics to 1e-12 for every aggregation mode (and a deliberately naive
per-rank normaliser is caught by the same comparison), a non-finite gradient on one rank skipping the step on all,
and checkpoints across world sizes (2 -> 1 and 1 -> 2).
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import dist_harness as H
from rlvr.trainer import dist, microbatch


@pytest.fixture(scope="module", params=["fsdp2", "ddp"])
def strategy(request):
    return request.param


@pytest.fixture(scope="module")
def update_report(tmp_path_factory, strategy):
    out = tmp_path_factory.mktemp(f"dp_update_{strategy}")
    H.run_ranks(H.update_checks, 2, str(out), strategy)
    return json.loads((out / "update.json").read_text())


def test_rows_are_shared_by_whole_groups_and_micro_batch_counts_are_equal():
    w0, w1 = dist.World(0, 2), dist.World(1, 2)
    rows = torch.arange(10)
    assert microbatch.rank_rows(rows, w0, group_size=2).tolist() == [0, 1, 2, 3]        # 2 of the 5 groups
    assert microbatch.rank_rows(rows, w1, group_size=2).tolist() == [4, 5, 6, 7, 8, 9]  # the other 3
    assert microbatch.rank_rows(torch.arange(7), w1).tolist() == [3, 4, 5, 6]           # rows when groups do not fit
    m0, m1 = microbatch.micro_batches(rows, 2, w0, 2), microbatch.micro_batches(rows, 2, w1, 2)
    assert [None if m is None else m.tolist() for m in m0] == [[0, 1], [2, 3], None]   # padded to rank 1's count
    assert [m.tolist() for m in m1] == [[4, 5], [6, 7], [8, 9]]
    assert [m.tolist() for m in microbatch.micro_batches(rows, 4, dist.World())] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("case", [f"{loss}/{mode}/{tokens}" for loss, mode, _, _, tokens in H.CASES])
def test_the_data_parallel_update_equals_the_one_process_update(update_report, case):
    r = update_report[case]
    assert r["moved"] > 1e-4                                   # the update did something
    assert r["weights"] <= 1e-12, r
    for key, (ref, dp) in r["metrics"].items():
        assert dp == pytest.approx(ref, rel=1e-11, abs=1e-14), key
    assert r["skipped"] == [0.0, 0.0]


@pytest.mark.parametrize("case", [f"{loss}/{mode}/{tokens}" for loss, mode, _, _, tokens in H.CASES])
def test_a_per_rank_normaliser_is_caught(update_report, case):
    """The same comparison fails for the naive variant: each rank dividing by its own rows' count."""
    r = update_report[case]
    if "seq_mean_token_sum_norm" in case:   # rows × a constant: 4 vs 6 rows still differ from 10
        assert r["naive_weights"] > 1e-6
    assert r["naive_weights"] > 1e3 * max(r["weights"], 1e-15)


def test_a_non_finite_gradient_on_one_rank_skips_the_step_on_every_rank(tmp_path, strategy):
    H.run_ranks(H.nan_check, 2, str(tmp_path), strategy)
    per_rank = json.loads((tmp_path / "nan.json").read_text())["per_rank"]
    assert per_rank == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]       # skipped, weights untouched; the next step trains


def test_checkpoints_move_between_world_sizes(tmp_path, strategy):
    """One process saves after one update (1 -> 2 is loaded by the ranks); the ranks save a sharded checkpoint after
    theirs and train one more step (2 -> 1 is loaded here); every weight and continuation equals the one-process
    ones."""
    from rlvr.trainer.checkpoint import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
    from rlvr.trainer.step import update_policy

    one = dist.World()
    algo, schedule = H.algorithm("ppo_clip", "token_mean"), H.Schedule(2, 1, micro_batch_size=2, max_grad_norm=1.0)
    single = H.make_policy(one, adam=True, strategy_wrap=False)
    update_policy(single, H.make_batch(0), algo, schedule, step=0)
    save_checkpoint(tmp_path / "ckpt1", single.model, single.optimizer, single.scheduler, TrainState(1, 0, 1))
    after_one = {k: p.detach().clone() for k, p in single.model.named_parameters()}
    H.run_ranks(H.checkpoint_checks, 2, str(tmp_path), strategy)
    update_policy(single, H.make_batch(1), algo, schedule, step=1)
    final = {k: p.detach() for k, p in single.model.named_parameters()}
    ranks = load_file(str(tmp_path / "ranks.safetensors"))
    for k, v in final.items():
        assert float((ranks[f"continued.{k}"] - v).abs().max()) <= 1e-12, k             # 2 ranks, uninterrupted
        assert float((ranks[f"continued_from_1.{k}"] - v).abs().max()) <= 1e-12, k      # 1 -> 2
        assert torch.equal(ranks[f"loaded_from_1.{k}"], after_one[k].detach()), k
    from rlvr.trainer.checkpoint import checkpoint_weights
    whole = checkpoint_weights(latest_checkpoint(tmp_path / "ckpt2"))                  # read without a model
    assert whole.keys() == after_one.keys()
    assert all(float((whole[k] - v).abs().max()) <= 1e-12 for k, v in after_one.items())
    moved = H.make_policy(one, adam=True, strategy_wrap=False)                          # 2 -> 1
    state = load_checkpoint(latest_checkpoint(tmp_path / "ckpt2"), moved.model, moved.optimizer, moved.scheduler)
    assert state.step == 1
    for k, p in moved.model.named_parameters():
        assert float((p.detach() - after_one[k].detach()).abs().max()) <= 1e-12, k
    update_policy(moved, H.make_batch(1), algo, schedule, step=1)
    for k, p in moved.model.named_parameters():
        assert float((p.detach() - final[k]).abs().max()) <= 1e-12, k

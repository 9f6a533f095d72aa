"""The policy update and checkpoints: an autograd oracle, batch-layout invariance, NaN skipping, atomic writes."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from rlvr import advantages, kl, losses
from rlvr.models import tiny_random, trainable_state_dict
from rlvr.rewards.scoring import Scores
from rlvr.trainer import checkpoint as ckpt
from rlvr.trainer import step as step_lib
from rlvr.trainer.algorithm import Algorithm
from rlvr.trainer.batch import Batch
from rlvr.trainer.build import Reference
from rlvr.trainer.step import Policy, Schedule
from rlvr.types import Problem, Rollout


def _batch(B: int = 8, T: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 99, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
               for _ in range(B)]
    ids = torch.randint(3, 99, (B, T), generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    ro = Rollout(prompt_ids=prompts, completion_ids=ids, lengths=lengths, finish_reasons=["stop"] * B,
                 texts=[""] * B)
    z = torch.zeros(B, dtype=torch.float64)
    scores = Scores(total=z, accuracy=z, format=z, overlong=z, reasons=[""] * B, extracted=[None] * B)
    problems = [Problem(prompt="p", answer="1", verifier="int", id=f"x/{i}") for i in range(B // 2)]
    adv = torch.randn(B, generator=g)
    return Batch(problems=problems, rollout=ro, scores=scores,
                 advantages=torch.where(ro.loss_mask, adv[:, None], 0.0))    # token-level, 0 where masked


def _row_adv(batch: Batch) -> torch.Tensor:
    return batch.advantages[:, 0]                                           # every row has a first token


def _settings(loss="reinforce", loss_kwargs=None, aggregation="token_mean", kl_coef=0.0, old_logprobs="recompute",
              num_iterations=1, mini_batches=1, micro_batch_size=8, max_grad_norm=0.0) -> tuple[Algorithm, Schedule]:
    algo = Algorithm(advantage=advantages.spec("grpo"), loss=losses.spec(loss), aggregation=aggregation,
                     kl=kl.get("k3"), loss_kwargs=loss_kwargs or {}, kl_coef=kl_coef,
                     old_from_behavior=old_logprobs == "behavior", max_tokens=6)
    return algo, Schedule(num_iterations, mini_batches, micro_batch_size, max_grad_norm, seed=0)


def update_policy(model, opt, sched, batch, settings, *, step, reference=None, log_ref_kl=False):
    """rlvr's update on a bare model: the Policy it needs built around it (``reference`` a context manager); a
    schedule with ``packed`` set packs sequences (``model.pack_sequences``)."""
    algo, schedule = settings
    ref = Reference(model, reference) if reference is not None else None
    policy = Policy(model, opt, sched, ref, chunk_size=64, log_ref_kl=log_ref_kl, pack=schedule.packed)
    return step_lib.update_policy(policy, batch, algo, schedule, step=step)


def _sgd(model, lr=1.0):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def _delta(before: dict, model) -> dict:
    return {k: v.detach() - before[k] for k, v in model.named_parameters()}


def _naive_logprobs(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Row by row, full logits, no padding: the oracle for completion log-probs."""
    ro = batch.rollout
    B, T = ro.completion_ids.shape
    out = torch.zeros(B, T)
    for b in range(B):
        n = int(ro.lengths[b])
        seq = torch.tensor(ro.prompt_ids[b] + ro.completion_ids[b, :n].tolist())[None]
        logits = model(seq).logits[0].float().log_softmax(-1)
        P = len(ro.prompt_ids[b])
        out[b, :n] = logits[P - 1:P - 1 + n].gather(-1, seq[0, P:P + n, None])[:, 0]
    return out, ro.loss_mask


def test_reinforce_update_equals_the_autograd_oracle():
    model, _ = tiny_random(0)
    batch = _batch()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt, sched = _sgd(model)
    m = update_policy(model, opt, sched, batch, _settings(), step=0)
    got = _delta(before, model)

    oracle, _ = tiny_random(0)
    lp, mask = _naive_logprobs(oracle, batch)
    loss = -(batch.advantages * lp * mask).sum() / mask.sum()
    loss.backward()
    for k, p in oracle.named_parameters():
        torch.testing.assert_close(got[k], -p.grad, atol=2e-6, rtol=1e-4, msg=k)
    assert m["loss/policy"] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert m["train/skipped_steps"] == 0.0
    # ASymPO's scale-imbalance diagnostic: mean token NLL of positive- and negative-advantage responses
    nll = -(lp * mask).sum(-1).detach() / mask.sum(-1)
    pos, neg = _row_adv(batch) > 0, _row_adv(batch) < 0
    assert pos.any() and neg.any()
    assert m["policy/nll_pos"] == pytest.approx(float(nll[pos].mean()), rel=1e-5)
    assert m["policy/nll_neg"] == pytest.approx(float(nll[neg].mean()), rel=1e-5)
    assert m["policy/nll_neg_over_pos"] == pytest.approx(float(nll[neg].mean() / nll[pos].mean()), rel=1e-5)


def test_group_weighted_update_equals_the_autograd_oracle():
    """group_mean_token_mean (AAPO's code): the token mean inside each prompt's group, groups averaged. Micro-batches
    of 3 rows split the groups of 2, so each row's group token count must come from the whole step."""
    batch = _batch()
    results = []
    for mbs in (3, 8):
        model, _ = tiny_random(0)
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        opt, sched = _sgd(model)
        m = update_policy(model, opt, sched, batch, _settings(aggregation="group_mean_token_mean",
                                                              micro_batch_size=mbs), step=0)
        results.append((_delta(before, model), m["loss/policy"]))
    oracle, _ = tiny_random(0)
    lp, mask = _naive_logprobs(oracle, batch)
    per_row = -(batch.advantages * lp * mask).sum(-1)                     # [B]
    loss = sum(per_row[g:g + 2].sum() / mask[g:g + 2].sum() for g in range(0, 8, 2)) / 4
    loss.backward()
    for got, value in results:
        for k, p in oracle.named_parameters():
            torch.testing.assert_close(got[k], -p.grad, atol=2e-6, rtol=1e-4, msg=k)
        assert value == pytest.approx(float(loss.detach()), rel=1e-5)
    lengths = batch.rollout.lengths.view(4, 2).sum(-1)
    assert len(set(lengths.tolist())) > 1        # groups of unequal tokens: token_mean would differ


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm",
                                  "group_mean_token_mean"])
def test_micro_batch_size_does_not_change_the_update(mode):
    results = []
    for mbs in (1, 3, 8):
        model, _ = tiny_random(0)
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        opt, sched = _sgd(model)
        update_policy(model, opt, sched, _batch(), _settings(micro_batch_size=mbs, aggregation=mode,
                                                             loss="ppo_clip"), step=0)
        results.append(_delta(before, model))
    for other in results[1:]:
        for k in results[0]:
            torch.testing.assert_close(other[k], results[0][k], atol=1e-6, rtol=1e-4, msg=k)


def test_mini_batches_and_iterations_make_that_many_optimiser_steps():
    model, _ = tiny_random(0)
    opt, sched = _sgd(model, lr=1e-2)
    m = update_policy(model, opt, sched, _batch(), _settings(loss="ppo_clip", num_iterations=2, mini_batches=2,
                                                             micro_batch_size=2), step=0)
    assert sched.last_epoch == 4
    # after the first optimiser step the policy has moved, so later ratios differ from 1
    assert m["loss_stats/ratio"] != pytest.approx(1.0, abs=1e-9)


def test_non_finite_gradient_skips_the_step_and_leaves_weights_untouched():
    model, _ = tiny_random(0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    p = next(model.parameters())
    h = p.register_hook(lambda g: torch.full_like(g, float("nan")))
    m = update_policy(model, opt, sched, _batch(), _settings(max_grad_norm=1.0), step=0)
    h.remove()
    assert m["train/skipped_steps"] == 1.0
    for k, v in model.named_parameters():
        assert torch.equal(v.detach(), before[k]), k
    assert not opt.state and sched.last_epoch == 0
    m = update_policy(model, opt, sched, _batch(), _settings(max_grad_norm=1.0), step=1)
    assert m["train/skipped_steps"] == 0.0 and sched.last_epoch == 1


def test_kl_term_adds_beta_times_k3_to_the_loss():
    model, _ = tiny_random(0)
    ref, _ = tiny_random(1)  # a different "reference" so the KL is not zero
    batch = _batch()
    ctx = _swap_context(model, ref)
    opt, sched = _sgd(model, lr=0.0 + 1e-12)
    m0 = update_policy(model, opt, sched, batch, _settings(), step=0, reference=ctx, log_ref_kl=True)
    m1 = update_policy(model, opt, sched, batch, _settings(kl_coef=0.5), step=0, reference=ctx)
    lp, mask = _naive_logprobs(model, batch)
    lr_, _ = _naive_logprobs(ref, batch)
    d = (lr_ - lp)
    k3 = (torch.exp(d) - 1 - d) * mask
    k3 = k3.detach()
    assert m0["policy/kl"] == pytest.approx(float(k3.sum() / mask.sum()), rel=1e-4)
    assert m1["loss/policy"] - m0["loss/policy"] == pytest.approx(0.5 * float(k3.sum() / mask.sum()), rel=1e-4)


def _swap_context(model, ref):
    """A reference context that temporarily loads ``ref``'s weights into ``model`` (tests only)."""
    from contextlib import contextmanager

    @contextmanager
    def ctx():
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(ref.state_dict())
        try:
            yield model
        finally:
            model.load_state_dict(saved)
    return ctx


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

def _trained(seed=0):
    model, _ = tiny_random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    update_policy(model, opt, sched, _batch(), _settings(), step=0)
    return model, opt, sched


def test_checkpoint_round_trip_restores_everything(tmp_path):
    model, opt, sched = _trained()
    torch.manual_seed(123)
    state = ckpt.TrainState(step=1, data_position=8, policy_version=1, extras={"eval_start": 0.25})
    path = ckpt.save_checkpoint(tmp_path, model, opt, sched, state)
    expect_rand = torch.rand(3)
    fresh, _ = tiny_random(5)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))
    got = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), fresh, opt2, sched2)
    assert path.name == "step_000001" and got == state
    for (k, a), (_, b) in zip(trainable_state_dict(model).items(), trainable_state_dict(fresh).items()):
        assert torch.equal(a, b), k
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for i in s1["state"]:
        for name, v in s1["state"][i].items():
            assert torch.equal(v, s2["state"][i][name]), (i, name)
    assert s1["param_groups"][0]["lr"] == s2["param_groups"][0]["lr"] and sched2.last_epoch == sched.last_epoch
    assert torch.equal(torch.rand(3), expect_rand)  # RNG state restored
    assert json.loads((path / "state.json").read_text())["data_position"] == 8


def test_interrupted_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    model, opt, sched = _trained()
    ckpt.save_checkpoint(tmp_path, model, opt, sched, ckpt.TrainState(2, 16, 2))
    calls = {"n": 0}
    real = ckpt.save_file

    def dying_save(tensors, path):
        calls["n"] += 1
        if calls["n"] == 2:  # weights written, then the process "dies" writing the optimiser state
            raise KeyboardInterrupt
        real(tensors, path)

    monkeypatch.setattr(ckpt, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, model, opt, sched, ckpt.TrainState(4, 32, 4))
    monkeypatch.undo()
    assert any(p.name.startswith(".tmp-step_000004") for p in tmp_path.iterdir())  # the half-written one
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step_000002"
    fresh, _ = tiny_random(5)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0)
    assert ckpt.load_checkpoint(latest, fresh, opt2, sched2).step == 2


def test_incomplete_checkpoint_is_reported(tmp_path):
    model, opt, sched = _trained()
    path = ckpt.save_checkpoint(tmp_path, model, opt, sched, ckpt.TrainState(1, 0, 1))
    (path / "optimizer.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="optimizer.safetensors is missing"):
        ckpt.load_checkpoint(path, model, opt, sched)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ckpt.latest_checkpoint(tmp_path / "nothing")


def test_old_checkpoints_are_pruned(tmp_path):
    model, opt, sched = _trained()
    for s in range(1, 5):
        ckpt.save_checkpoint(tmp_path, model, opt, sched, ckpt.TrainState(s, 0, s), keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000003", "step_000004"]
    assert (tmp_path / "latest").read_text().strip() == "step_000004"


def _with_behavior(batch: Batch, model, shift: float) -> Batch:
    """The batch with behaviour log-probs = the model's own log-probs − shift at valid tokens (0 elsewhere)."""
    lp, mask = _naive_logprobs(model, batch)
    ro = batch.rollout
    ro.behavior_logprobs = torch.where(mask, lp.detach() - shift, 0.0)
    return batch


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5])
def test_behavior_kl_is_k3_with_the_sampler_as_the_sampling_policy(shift):
    model, _ = tiny_random(0)
    batch = _with_behavior(_batch(), model, shift)
    m = update_policy(model, *_sgd(model, lr=0.0), batch, _settings(loss="decoupled_ppo"), step=0)
    # r = π_θ/π_b = e^shift at every token: KL(π_b ‖ π_θ) estimate r − 1 − log r
    assert m["policy/behavior_kl"] == pytest.approx(math.expm1(shift) - shift, abs=1e-6)
    assert m["loss_stats/behavior_weight"] == pytest.approx(math.exp(shift), rel=1e-5)


def test_old_logprobs_behavior_takes_the_ppo_ratio_to_the_sampler():
    model, _ = tiny_random(0)
    batch = _with_behavior(_batch(), model, 0.5)  # ratio π_θ/π_b = e^0.5 ≈ 1.65, outside the 0.2 band
    mask = batch.rollout.loss_mask
    pos = int(((batch.advantages > 0) & mask).sum()) / int(mask.sum())
    lr0 = dict(lr=0.0)
    recompute = update_policy(model, *_sgd(model, **lr0), batch, _settings(loss="ppo_clip"), step=0)
    behavior = update_policy(model, *_sgd(model, **lr0), batch, _settings(loss="ppo_clip", old_logprobs="behavior"),
                             step=0)
    assert recompute["loss_stats/clip_frac"] == 0.0 and "policy/behavior_kl" not in recompute
    # clipped exactly where A > 0 (ratio above 1 + ε pushes a positive advantage out of the band)
    assert behavior["loss_stats/clip_frac"] == pytest.approx(pos, abs=1e-9)
    assert behavior["loss_stats/ratio"] == pytest.approx(math.exp(0.5), rel=1e-5)


def test_a_loss_that_reads_behavior_logprobs_says_so_when_the_rollout_has_none():
    model, _ = tiny_random(0)
    with pytest.raises(ValueError, match="decoupled_ppo.*behaviour log-probs.*SamplingParams\\(logprobs=True\\)"):
        update_policy(model, *_sgd(model), _batch(), _settings(loss="decoupled_ppo"), step=0)
    with pytest.raises(ValueError, match="old_logprobs=behavior"):
        update_policy(model, *_sgd(model), _batch(), _settings(loss="ppo_clip", old_logprobs="behavior"), step=0)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm",
                                  "group_mean_token_mean"])
def test_a_token_budget_gives_the_update_of_the_fixed_row_split(mode):
    """algo.max_tokens_per_micro_batch packs rows by length instead of cutting them by count, padded or packed
    (model.pack_sequences): the same optimiser step (one normaliser over all its rows), so the same update up to
    float rounding (fp64 here), with a π_old pass (2 iterations) and a reference pass (KL term) through the same
    paths."""
    results = []
    for budget, packed in ((None, False), (14, False), (30, False), (1000, False), (None, True), (14, True),
                           (30, True)):
        model, _ = tiny_random(0)
        model = model.double()
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        opt, sched = _sgd(model)
        algo, schedule = _settings(micro_batch_size=3, aggregation=mode, loss="ppo_clip", num_iterations=2,
                                   kl_coef=0.1)
        schedule = dataclasses.replace(schedule, max_tokens_per_micro_batch=budget, packed=packed)
        ref = _swap_context(model, tiny_random(1)[0].double())
        update_policy(model, opt, sched, _batch(), (algo, schedule), step=0, reference=ref)
        results.append(_delta(before, model))
    for other in results[1:]:
        for k in results[0]:
            torch.testing.assert_close(other[k], results[0][k], atol=1e-13, rtol=1e-11, msg=k)


def test_token_budget_packing_by_hand():
    from rlvr.trainer.dist import World
    from rlvr.trainer.microbatch import Budget, micro_batches, token_shares

    lengths = torch.tensor([9, 2, 5, 5, 3, 12])
    rows = torch.arange(6)
    with pytest.warns(UserWarning, match="a row of 12 prompt \\+ completion tokens exceeds"):
        plan = micro_batches(rows, Budget(rows=99, tokens=10), World(), lengths=lengths)
    # longest first: 12 alone (over budget, warned); 9 alone (2 × 9 > 10); 5 + 5 (2 × 5); 3 + 2 (2 × 3)
    assert [mb.tolist() for mb in plan] == [[5], [0], [2, 3], [4, 1]]
    # two ranks, groups of 2 rows: groups (0,1)=11, (2,3)=10, (4,5)=15 -> 15 to rank 0, 11 to rank 1, 10 to rank 1
    shares = token_shares(rows, lengths, World(0, 2), group_size=2)
    assert [s.tolist() for s in shares] == [[4, 5], [0, 1, 2, 3]]
    m0 = micro_batches(rows, Budget(tokens=24), World(0, 2), group_size=2, lengths=lengths)
    m1 = micro_batches(rows, Budget(tokens=24), World(1, 2), group_size=2, lengths=lengths)
    assert [None if m is None else m.tolist() for m in m0] == [[5, 4], None]       # padded to rank 1's count
    assert [m.tolist() for m in m1] == [[0, 2], [3, 1]]
    # packed: a micro-batch costs the sum of its lengths; each row into the first with room (budget 14)
    plan = micro_batches(rows, Budget(rows=99, tokens=14, packed=True), World(), lengths=lengths)
    assert [mb.tolist() for mb in plan] == [[5, 1], [0, 2], [3, 4]]
    padded = micro_batches(rows, Budget(rows=99, tokens=14), World(), lengths=lengths)
    assert [mb.tolist() for mb in padded] == [[5], [0], [2, 3], [4, 1]]

"""PPO's critic: value alignment against a row-by-row oracle, gradients (full and LoRA), registry-driven
construction, the value update (convergence, masked garbage, clipping), the KL-in-reward term, and the
critic inside the real training loop (end to end, and resume exactness)."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rlvr import advantages
from rlvr.config import load_config
from rlvr.logprobs import completion_logprobs
from rlvr.metrics import read_metrics
from rlvr.models import apply_lora, tiny_random, trainable_state_dict
from rlvr.trainer import build
from rlvr.trainer import critic as critic_lib
from rlvr.rewards.scoring import Scores
from rlvr.trainer.algorithm import Algorithm
from rlvr.trainer.batch import Batch
from rlvr.trainer.step import Policy, Schedule
from rlvr.types import Problem, Rollout
from rlvr.value import ValueModel, build_value_model, completion_values

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The model is tiny: one intra-op thread is faster, and far faster when the machine is busy."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# As tests/test_train_e2e.py: tiny-random never gets an answer right, so the signal comes from DAPO's overlong
# shaping (the reward ramps from 0 to −1 with the length), and vowels/digits as stop strings vary the lengths.
TINY = ["model.name=tiny-random", "data.source=arith", "data.task_kwargs={}", "data.verifier=int", "data.size=120",
        "data.eval_size=8", "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=12",
        "reward.overlong_buffer=12", "reward.num_workers=0", "algo.micro_batch_size=4", "optim.lr=1e-2",
        "rollout.stop=[a, e, i, o, u, '0', '1', '2', '3', '4', '5']", "log.progress=false", "log.tensorboard=false"]


def _strip_perf(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("perf/") and k != "eval/seconds"} for r in rows]


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def _rollout(prompt_lens, lengths, T=None, seed=0, pad_id=None) -> Rollout:
    """Random prompts and completions (ids 3..98) with the given lengths; padding holds random ids too
    (or ``pad_id``), so nothing may read it."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    T = T if T is not None else max(max(lengths), 1)
    prompts = [torch.randint(3, 99, (n,), generator=g).tolist() for n in prompt_lens]
    ids = torch.randint(3, 99, (B, T), generator=g)
    lengths = torch.tensor(lengths, dtype=torch.long)
    if pad_id is not None:
        ids[~(torch.arange(T)[None, :] < lengths[:, None])] = pad_id
    return Rollout(prompt_ids=prompts, completion_ids=ids, lengths=lengths, finish_reasons=["stop"] * B,
                   texts=[""] * B)


def _random_head(critic: ValueModel, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        critic.head.weight.copy_(torch.randn(critic.head.weight.shape, generator=g) * 0.3)
        critic.head.bias.fill_(0.25)


def _oracle_values(critic: ValueModel, ro: Rollout) -> torch.Tensor:
    """Row by row, no padding, the model's own attention: head(hidden[len(prompt) − 1 + t])."""
    lm = critic.lm
    B, T = ro.completion_ids.shape
    out = torch.zeros(B, T)
    for b in range(B):
        n = int(ro.lengths[b])
        seq = torch.tensor(ro.prompt_ids[b] + ro.completion_ids[b, :n].tolist())[None]
        hidden = lm(input_ids=seq, output_hidden_states=True).hidden_states[-1][0]
        P = len(ro.prompt_ids[b])
        out[b, :n] = critic.head(hidden[P - 1:P - 1 + n]).squeeze(-1)
    return out


def _settings(num_iterations=1, mini_batches=1, micro_batch_size=8) -> Schedule:
    return Schedule(num_iterations, mini_batches, micro_batch_size, max_grad_norm=0.0, seed=0)


def values(critic: ValueModel, ro: Rollout, *, micro_batch_size: int) -> torch.Tensor:
    return critic_lib.values(critic_lib.Critic(critic, None), ro, micro_batch_size=micro_batch_size)


def update_critic(critic: ValueModel, opt, batch, schedule: Schedule, *, step: int, value_clip: float) -> dict:
    """rlvr's critic update on a bare value model and optimiser (value_clip 0 = off, as critic.value_clip)."""
    wrapped = critic_lib.Critic(critic, opt, value_clip if value_clip > 0 else None)
    return critic_lib.update_critic(wrapped, batch, schedule, step=step)


def token_kl(model, reference, ro: Rollout, *, micro_batch_size: int, chunk_size: int) -> torch.Tensor:
    policy = Policy(model, None, reference=build.Reference(model, reference), chunk_size=chunk_size)
    return critic_lib.token_kl(policy, ro, micro_batch_size=micro_batch_size)


def build_critic(cfg):
    """(value model, optimiser) of the run's critic, or None; built as the trainer builds it."""
    critic = build.build_critic(cfg, CPU, Algorithm.from_config(cfg))
    return None if critic is None else (critic.model, critic.optimizer)


def _batch(ro: Rollout, values: torch.Tensor, returns: torch.Tensor) -> Batch:
    B = ro.lengths.shape[0]
    z = torch.zeros(B, dtype=torch.float64)
    scores = Scores(total=z, accuracy=z, format=z, overlong=z, reasons=[""] * B, extracted=[None] * B)
    problems = [Problem(prompt="p", answer="1", verifier="int", id=f"x/{i}") for i in range(B // 2)]
    return Batch(problems=problems, rollout=ro, scores=scores, advantages=torch.zeros(values.shape),
                 values=values, returns=returns)


def _critic(seed: int = 0, **kw) -> ValueModel:
    lm, _ = tiny_random(seed)
    return build_value_model(lm, **kw)


def _adamw(critic: ValueModel, lr: float = 1e-3) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in critic.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)


# Rows of different prompt and completion lengths, including a full-width row and a one-token row.
PROMPT_LENS = [3, 7, 1, 5, 2]
LENGTHS = [6, 2, 4, 1, 5]


# ----------------------------------------------------------------------------------------------
# 1. Alignment
# ----------------------------------------------------------------------------------------------

def test_completion_values_match_the_row_by_row_oracle_and_are_zero_past_the_length():
    critic = _critic()
    _random_head(critic)
    ro = _rollout(PROMPT_LENS, LENGTHS, T=8)  # two columns of pure padding
    with torch.no_grad():
        got = completion_values(critic, ro.prompt_ids, ro.completion_ids, ro.lengths)
        want = _oracle_values(critic, ro)
    assert got.shape == (5, 8) and got.dtype == torch.float32
    mask = ro.loss_mask
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=0)
    assert torch.equal(got[~mask], torch.zeros(int((~mask).sum())))
    assert (got[mask] != 0).all()  # the oracle comparison is not vacuous
    # The alignment is the log-probs': the value of position t is read where completion token t is predicted.
    # Shifting by one position (the usual off-by-one) must give different numbers.
    assert not torch.allclose(got[0, 1:6], want[0, 0:5], atol=1e-3)


def test_completion_values_do_not_depend_on_padding_or_the_other_rows():
    critic = _critic()
    _random_head(critic)
    ro = _rollout(PROMPT_LENS, LENGTHS, T=8, seed=3)
    other = _rollout(PROMPT_LENS, LENGTHS, T=8, seed=3, pad_id=97)  # same real tokens, other padding ids
    assert torch.equal(other.completion_ids[ro.loss_mask], ro.completion_ids[ro.loss_mask])
    with torch.no_grad():
        batched = completion_values(critic, ro.prompt_ids, ro.completion_ids, ro.lengths)
        repadded = completion_values(critic, other.prompt_ids, other.completion_ids, other.lengths)
        for b in range(len(LENGTHS)):
            n = int(ro.lengths[b])
            alone = completion_values(critic, [ro.prompt_ids[b]], ro.completion_ids[b:b + 1, :n],
                                      ro.lengths[b:b + 1])
            torch.testing.assert_close(batched[b, :n], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched, repadded, atol=1e-6, rtol=0)
    # Reversing the row order permutes the output rows and nothing else.
    rev = list(reversed(range(len(LENGTHS))))
    with torch.no_grad():
        reversed_out = completion_values(critic, [ro.prompt_ids[i] for i in rev], ro.completion_ids[rev],
                                         ro.lengths[rev])
    torch.testing.assert_close(reversed_out, batched[rev], atol=1e-5, rtol=0)


def test_values_stay_float32_under_bf16_autocast():
    critic = build_value_model(tiny_random(0)[0])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        v = completion_values(critic, [[5, 6, 7]], torch.tensor([[8, 9]]), torch.tensor([2]))
    assert v.dtype == torch.float32


def test_a_fresh_value_model_predicts_exactly_zero():
    lm, _ = tiny_random(0)
    critic = ValueModel(lm)
    assert torch.equal(critic.head.weight, torch.zeros_like(critic.head.weight))
    assert torch.equal(critic.head.bias, torch.zeros_like(critic.head.bias))
    ro = _rollout(PROMPT_LENS, LENGTHS, T=7)
    with torch.no_grad():
        v = critic(ro.prompt_ids, ro.completion_ids, ro.lengths)
    assert v.shape == (5, 7) and torch.equal(v, torch.zeros(5, 7))
    # values() (V_old of a rollout) on CPU, micro-batched, also exactly 0, and restores train mode.
    critic.train()
    out = values(critic, ro, micro_batch_size=2)
    assert out.device.type == "cpu" and torch.equal(out, torch.zeros(5, 7)) and critic.training


def test_values_fn_equals_completion_values_whatever_the_micro_batch_size():
    critic = _critic()
    _random_head(critic)
    ro = _rollout(PROMPT_LENS, LENGTHS, T=9, seed=5)
    with torch.no_grad():
        want = completion_values(critic, ro.prompt_ids, ro.completion_ids, ro.lengths)
    for mbs in (1, 2, 5):
        got = values(critic, ro, micro_batch_size=mbs)
        assert got.shape == (5, 9)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert torch.equal(got[~ro.loss_mask], torch.zeros(int((~ro.loss_mask).sum())))


@pytest.mark.parametrize("share_prompts, pack, path", [(True, False, "shared_prompt_hidden"),
                                                       (False, True, "packed_hidden"),
                                                       (True, True, "packed_shared_hidden")])
def test_shared_and_packed_value_passes_equal_the_padded_pass_in_values_and_gradients(share_prompts, pack, path,
                                                                                        monkeypatch):
    import rlvr.logprobs as logprobs_lib

    critic = _critic()
    _random_head(critic)
    ro = _rollout([4, 4, 4, 6, 6, 2], [5, 1, 3, 6, 2, 4], T=7, seed=11)
    prompts = [ro.prompt_ids[0]] * 3 + [ro.prompt_ids[3]] * 2 + [ro.prompt_ids[5]]   # two groups and a single
    w = torch.randn(6, 7, generator=torch.Generator().manual_seed(2))

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        critic.zero_grad()
        v = completion_values(critic, prompts, ro.completion_ids, ro.lengths)
        (v * w).sum().backward()
        return v.detach(), {k: p.grad.clone() for k, p in critic.named_parameters()}

    want, want_grads = run()                     # the padded pass: every row prompt + completion
    calls = []
    real = getattr(logprobs_lib, path)
    monkeypatch.setattr(logprobs_lib, path, lambda *a, **k: calls.append(path) or real(*a, **k))
    critic.share_prompts, critic.pack = share_prompts, pack
    got, got_grads = run()
    assert calls == [path]                       # the pass under test ran, not the padded fallback
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert torch.equal(got[~ro.loss_mask], torch.zeros(int((~ro.loss_mask).sum())))
    for k, g in want_grads.items():
        torch.testing.assert_close(got_grads[k], g, atol=1e-5, rtol=1e-4, msg=k)


# ----------------------------------------------------------------------------------------------
# 2. Gradients
# ----------------------------------------------------------------------------------------------

def test_the_value_loss_reaches_the_head_and_every_backbone_parameter():
    critic = _critic()
    _random_head(critic)
    params = dict(critic.named_parameters())
    assert all(p.requires_grad for p in params.values())
    ro = _rollout(PROMPT_LENS, LENGTHS)
    v = completion_values(critic, ro.prompt_ids, ro.completion_ids, ro.lengths)
    ((v - 1.0) ** 2)[ro.loss_mask].sum().backward()
    missing = [k for k, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without a gradient: {missing}"


def test_a_zero_head_passes_no_gradient_to_the_backbone_but_learns_itself():
    critic = _critic()  # fresh: zero head
    ro = _rollout(PROMPT_LENS, LENGTHS)
    v = completion_values(critic, ro.prompt_ids, ro.completion_ids, ro.lengths)
    ((v - 1.0) ** 2)[ro.loss_mask].sum().backward()
    n = int(ro.lengths.sum())
    assert critic.head.bias.grad.item() == pytest.approx(-2.0 * n)  # d/db Σ (0 + b − 1)² at b = 0
    assert critic.head.weight.grad.abs().sum() > 0
    for name, p in critic.lm.named_parameters():
        assert p.grad is None or not p.grad.any(), name


def test_lora_critic_trains_only_adapters_and_head():
    critic = _critic(lora=dict(rank=4, alpha=8))
    _random_head(critic)
    trainable = {k for k, p in critic.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    others = trainable - {"head.weight", "head.bias"}
    assert others and all("lora_A" in k or "lora_B" in k for k in others), sorted(others)
    frozen = {k: p.detach().clone() for k, p in critic.named_parameters() if not p.requires_grad}
    assert frozen and not any("lora_" in k for k in frozen)
    assert any(k.endswith("embed_tokens.weight") for k in frozen)

    ro = _rollout(PROMPT_LENS, LENGTHS)
    opt = _adamw(critic, lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        v = completion_values(critic, ro.prompt_ids, ro.completion_ids, ro.lengths)
        ((v - 1.0) ** 2)[ro.loss_mask].sum().backward()
        for k, p in critic.named_parameters():
            if p.requires_grad:
                assert p.grad is not None, k
            else:
                assert p.grad is None, k
        # B starts at 0, so the first backward reaches B (not A); the head always learns.
        assert all(p.grad.abs().sum() > 0 for k, p in critic.named_parameters() if "lora_B" in k)
        opt.step()
    assert all(p.grad.abs().sum() > 0 for k, p in critic.named_parameters() if p.requires_grad), \
        "after one step (B != 0) every adapter gets a gradient"
    for k, p in critic.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[k]), f"frozen base weight {k} changed"


# ----------------------------------------------------------------------------------------------
# 3. Registry-driven construction
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def token_level_estimator():
    """A user-defined token-level estimator (a wrapper of gae) registered under a new name, removed after."""
    calls = []

    def test_tok(rewards, **kw):
        calls.append(kw)
        return advantages.gae(rewards, **kw)

    name = "test_tok"
    advantages.register(name, needs_values=True)(test_tok)
    try:
        yield name, calls
    finally:
        advantages._REGISTRY._entries.pop(name, None)
    assert name not in advantages.names()


def _check_critic(out, cfg):
    assert out is not None
    critic, opt = out
    assert isinstance(critic, ValueModel) and isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == cfg.critic.lr
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in critic.parameters() if p.requires_grad}
    assert torch.equal(critic.head.weight, torch.zeros_like(critic.head.weight))
    return critic


def test_build_critic_follows_the_registry_not_the_name(token_level_estimator):
    name, calls = token_level_estimator
    assert build_critic(load_config(None, [*TINY, "algo.advantage=grpo"])) is None
    assert build_critic(load_config(None, [*TINY, "algo.advantage=rloo"])) is None

    cfg = load_config(None, [*TINY, "algo.advantage=gae", "model.lora=false"])
    critic = _check_critic(build_critic(cfg), cfg)
    assert all(p.requires_grad for p in critic.parameters())  # model.lora=false: full fine-tune
    assert (critic.share_prompts, critic.pack) == (True, False)  # its passes run as the policy's (the defaults)
    cfg = load_config(None, [*TINY, "algo.advantage=gae", "model.share_prompts=false", "model.pack_sequences=true"])
    packed = build_critic(cfg)[0]
    assert (packed.share_prompts, packed.pack) == (False, True)

    cfg = load_config(None, [*TINY, f"algo.advantage={name}", "model.lora=true", "algo.reward_kl_coef=0.1"])
    build.check_algorithm(cfg)  # a token-level estimator accepts the KL-in-reward term
    critic = _check_critic(build_critic(cfg), cfg)
    trainable = {k for k, p in critic.named_parameters() if p.requires_grad}
    assert trainable - {"head.weight", "head.bias"} and all(
        "lora_" in k for k in trainable - {"head.weight", "head.bias"})  # critic.lora=None follows model.lora

    cfg = load_config(None, [*TINY, f"algo.advantage={name}", "model.lora=true", "critic.lora=false"])
    critic = _check_critic(build_critic(cfg), cfg)
    assert all(p.requires_grad for p in critic.parameters())


def test_a_registered_token_level_estimator_trains_a_critic_end_to_end(tmp_path, token_level_estimator):
    from rlvr.trainer import sync

    name, calls = token_level_estimator
    cfg = load_config(None, [*TINY, "steps=1", f"algo.advantage={name}", "algo.aggregation=token_mean",
                             "eval.at_start=false"])
    sync.train(cfg, run_dir=tmp_path / "r")
    assert len(calls) == 2          # the check on one group of G before anything loads, then the step's batch
    assert calls[0]["values"].shape == (cfg.rollout.group_size, 1)
    kw = calls[1]
    assert kw["values"].shape == kw["loss_mask"].shape and kw["values"].shape[0] == 8
    assert torch.equal(kw["values"], torch.zeros_like(kw["values"]))  # the zero-initialised head
    rows = [r for r in read_metrics(tmp_path / "r") if "loss/policy" in r]
    assert len(rows) == 1 and math.isfinite(rows[0]["critic/value_loss"])
    assert (tmp_path / "r/checkpoints/step_000001/critic.safetensors").is_file()


def test_reward_kl_coef_needs_a_token_level_estimator():
    cfg = load_config(None, [*TINY, "algo.advantage=grpo", "algo.reward_kl_coef=0.1"])
    with pytest.raises(ValueError, match="reward_kl_coef"):
        build.check_algorithm(cfg)
    build.check_algorithm(load_config(None, [*TINY, "algo.advantage=gae", "algo.reward_kl_coef=0.1"]))


# ----------------------------------------------------------------------------------------------
# 4. update_critic
# ----------------------------------------------------------------------------------------------

def _fixed_batch(seed: int = 0, T: int = 8):
    ro = _rollout(PROMPT_LENS + [4, 2, 6], LENGTHS + [8, 3, 7], T=T, seed=seed)
    B = ro.lengths.shape[0]
    # A target per row (from −1 to 1), ramping mildly along the tokens: learnable from the prompt.
    returns = torch.linspace(-1, 1, B)[:, None] + 0.05 * torch.arange(T)[None, :]
    returns = torch.where(ro.loss_mask, returns, torch.zeros(()))
    return ro, returns


def test_update_critic_fits_the_returns():
    ro, returns = _fixed_batch()
    mask = ro.loss_mask
    critic = _critic()
    opt = _adamw(critic, lr=2e-3)
    s = _settings(num_iterations=2, mini_batches=2, micro_batch_size=3)
    losses = []
    for step in range(8):
        old = values(critic, ro, micro_batch_size=4)  # V_old, as at collection time
        m = update_critic(critic, opt, _batch(ro, old, returns), s, step=step, value_clip=0.5)
        assert m["critic/skipped_steps"] == 0 and math.isfinite(m["critic/grad_norm"])
        if step == 0:  # the zero head: V_old = 0 exactly
            assert torch.equal(old, torch.zeros_like(old))
        losses.append(m["critic/value_loss"])
    assert losses[-1] < 0.5 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 5, losses
    # The fitted critic itself is closer to the returns than the zero critic was.
    final = values(critic, ro, micro_batch_size=8)
    after = float((0.5 * (final - returns) ** 2)[mask].mean())
    assert after < losses[0] * 0.5


def test_first_value_loss_is_half_the_mean_squared_return():
    ro, returns = _fixed_batch()
    critic = _critic()
    m = update_critic(critic, _adamw(critic), _batch(ro, torch.zeros(returns.shape), returns),
                                 _settings(), step=0, value_clip=0.0)
    want = float((0.5 * returns ** 2)[ro.loss_mask].double().mean())
    assert m["critic/value_loss"] == pytest.approx(want, rel=1e-6)
    assert m["critic/loss"] == pytest.approx(want, rel=1e-5)
    assert m["critic/vf_clip_frac"] == 0.0


@pytest.mark.parametrize("garbage", [float("nan"), 1e30, float("-inf")])
def test_garbage_at_masked_positions_changes_nothing(garbage):
    ro, returns = _fixed_batch()
    mask = ro.loss_mask
    base = _critic()
    _random_head(base)
    noise = torch.randn(returns.shape, generator=torch.Generator().manual_seed(2))
    old = values(base, ro, micro_batch_size=8) + 0.1 * noise  # V_old near V: some tokens clip
    old = torch.where(mask, old, torch.zeros(()))
    s = _settings(num_iterations=2, mini_batches=2, micro_batch_size=2)
    results = []
    for fill in (0.0, garbage):
        critic = copy.deepcopy(base)
        opt = _adamw(critic)
        batch = _batch(ro, torch.where(mask, old, fill), torch.where(mask, returns, fill))
        m = update_critic(critic, opt, batch, s, step=3, value_clip=0.2)
        results.append((m, critic.state_dict()))
    (m0, w0), (m1, w1) = results
    assert m0 == m1
    assert m0["critic/skipped_steps"] == 0 and 0 < m0["critic/vf_clip_frac"] < 1
    assert set(w0) == set(w1)
    changed = [k for k in w0 if not torch.equal(w0[k], base.state_dict()[k])]
    assert changed  # the update did something
    unequal = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    assert not unequal, unequal


def test_value_clip_reports_clipping_and_zero_clip_is_off():
    ro, _ = _fixed_batch()
    mask = ro.loss_mask
    returns = torch.zeros(mask.shape)
    far = torch.where(mask, torch.full(mask.shape, 5.0), torch.zeros(()))  # V_old = 5, V = 0, R = 0

    critic = _critic()
    before = copy.deepcopy(critic.state_dict())
    m = update_critic(critic, _adamw(critic), _batch(ro, far, returns), _settings(), step=0,
                                 value_clip=0.01)
    # V = 0 lies below V_old − ε = 4.99, on R's side: the clipped term ½·4.99² wins everywhere, with no gradient.
    assert m["critic/vf_clip_frac"] == pytest.approx(1.0)
    assert m["critic/value_loss"] == pytest.approx(0.5 * 4.99 ** 2, rel=1e-6)
    assert m["critic/grad_norm"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in critic.state_dict().items())

    critic = _critic()
    m = update_critic(critic, _adamw(critic), _batch(ro, far, returns), _settings(), step=0,
                                 value_clip=0.0)
    assert m["critic/vf_clip_frac"] == 0.0
    assert m["critic/value_loss"] == 0.0  # unclipped: ½·(0 − 0)²
    # Some clipping with a moving critic: V_old far from V (head ≠ 0), tiny ε, several steps.
    critic = _critic()
    _random_head(critic)
    ro2, returns2 = _fixed_batch(seed=1)
    v0 = values(critic, ro2, micro_batch_size=8)
    m = update_critic(critic, _adamw(critic), _batch(ro2, v0 + 3.0, returns2),
                                 _settings(num_iterations=2, mini_batches=2, micro_batch_size=3), step=0,
                                 value_clip=1e-3)
    assert m["critic/vf_clip_frac"] > 0
    m = update_critic(critic, _adamw(critic), _batch(ro2, v0 + 3.0, returns2),
                                 _settings(num_iterations=2, mini_batches=2, micro_batch_size=3), step=1,
                                 value_clip=0.0)
    assert m["critic/vf_clip_frac"] == 0.0


def test_value_metrics_on_a_hand_built_batch():
    ro, returns = _fixed_batch()
    mask = ro.loss_mask
    values = torch.where(mask, returns * 0.5, torch.full(mask.shape, float("nan")))
    m = critic_lib.value_metrics(_batch(ro, values, returns))
    r, v = returns[mask].double(), values[mask].double()
    assert m["critic/values_mean"] == pytest.approx(float(v.mean()))
    assert m["critic/returns_mean"] == pytest.approx(float(r.mean()))
    assert m["critic/explained_variance"] == pytest.approx(1 - float((r - v).var()) / float(r.var()))


# ----------------------------------------------------------------------------------------------
# 5. token_kl
# ----------------------------------------------------------------------------------------------

def _lora_policy():
    model, _ = tiny_random(0)
    torch.manual_seed(0)
    return apply_lora(model, rank=4, alpha=8)


def test_token_kl_is_zero_for_fresh_adapters_and_equals_the_logprob_difference_after():
    model = _lora_policy()
    ro = _rollout(PROMPT_LENS, LENGTHS, T=8, seed=7)
    mask = ro.loss_mask
    kl = token_kl(model, model.disable_adapter, ro, micro_batch_size=2, chunk_size=16)
    assert kl.shape == (5, 8) and kl.dtype == torch.float32 and kl.device.type == "cpu"
    assert torch.equal(kl, torch.zeros(5, 8))

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    kl = token_kl(model, model.disable_adapter, ro, micro_batch_size=2, chunk_size=16)
    with torch.no_grad():
        lp, _ = completion_logprobs(model, ro.prompt_ids, ro.completion_ids, ro.lengths)
        with model.disable_adapter():
            lp_ref, _ = completion_logprobs(model, ro.prompt_ids, ro.completion_ids, ro.lengths)
    want = (lp - lp_ref)
    torch.testing.assert_close(kl[mask], want[mask], atol=1e-5, rtol=0)
    assert torch.equal(kl[~mask], torch.zeros(int((~mask).sum())))
    assert (kl[mask].abs() > 1e-4).all()  # the perturbation moved every token's log-prob
    # The adapters are back on after the call (the reference context was only entered inside).
    with torch.no_grad():
        lp_again, _ = completion_logprobs(model, ro.prompt_ids, ro.completion_ids, ro.lengths)
    assert torch.equal(lp_again, lp)


# ----------------------------------------------------------------------------------------------
# 6. End to end
# ----------------------------------------------------------------------------------------------

CRITIC_KEYS = {"critic/values_mean", "critic/returns_mean", "critic/explained_variance", "critic/value_loss",
               "critic/vf_clip_frac", "critic/loss", "critic/grad_norm", "critic/skipped_steps"}
GAE = ["algo.advantage=gae", "algo.aggregation=token_mean"]


def _train_rows(run):
    return [r for r in read_metrics(run) if "loss/policy" in r]


@pytest.mark.parametrize("lora", [False, True])
def test_ppo_with_a_critic_trains_end_to_end(tmp_path, lora):
    from rlvr.trainer import sync

    cfg = load_config(None, [*TINY, "steps=3", *GAE, f"model.lora={str(lora).lower()}", "log.completions_every=1"])
    sync.train(cfg, run_dir=tmp_path / "r")
    rows = _train_rows(tmp_path / "r")
    logged = [json.loads(line) for line in (tmp_path / "r/completions.jsonl").read_text().splitlines()]
    train_rows = [c for c in logged if not c.get("eval")]
    assert train_rows and all(math.isfinite(c["advantage"]) for c in train_rows)  # a row's mean token advantage
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert CRITIC_KEYS <= set(r), CRITIC_KEYS - set(r)
        for k in ("loss/policy", "critic/loss", "critic/value_loss", "critic/grad_norm", "critic/values_mean",
                  "critic/returns_mean"):
            assert isinstance(r[k], float) and math.isfinite(r[k]), (r["step"], k, r[k])
        assert r["train/skipped_steps"] == 0 and r["critic/skipped_steps"] == 0
        for k, v in r.items():
            if k.startswith("adv/"):
                assert math.isfinite(v), (k, v)
        assert r["adv/frac_zero"] < 1.0
    assert rows[0]["critic/values_mean"] == 0.0  # the zero head's V_old at the first collection
    assert rows[-1]["critic/values_mean"] != 0.0

    initial = trainable_state_dict(build_critic(cfg)[0])
    ckpt = tmp_path / "r/checkpoints/step_000003"
    trained = load_file(str(ckpt / "critic.safetensors"))
    assert (ckpt / "critic_optimizer.safetensors").is_file()
    assert set(trained) == set(initial)
    assert trained["head.weight"].abs().sum() > 0 and trained["head.bias"].abs().sum() > 0
    unchanged = [k for k in initial if torch.equal(initial[k], trained[k])]
    assert not unchanged, f"critic parameters that did not change: {unchanged}"
    if lora:
        assert all("lora_" in k or k.startswith("head.") for k in trained)


def test_kl_in_the_reward_runs_and_enters_the_returns(tmp_path):
    from rlvr.trainer import sync

    runs = {}
    for coef in (0.0, 0.05):
        cfg = load_config(None, [*TINY, "steps=2", *GAE, "model.lora=true", f"algo.reward_kl_coef={coef}",
                                 "eval.at_start=false"])
        sync.train(cfg, run_dir=tmp_path / str(coef))
        runs[coef] = _train_rows(tmp_path / str(coef))
    rows = runs[0.05]
    assert len(rows) == 2
    for r in rows:
        for k in ("loss/policy", "critic/loss", "critic/value_loss", "critic/returns_mean", "adv/mean"):
            assert math.isfinite(r[k]), (k, r[k])
    # Step 1: the policy is the reference (LoRA B = 0), so the KL term is exactly 0 and nothing differs.
    assert _strip_perf(runs[0.0][:1]) == _strip_perf(rows[:1])
    # Step 2: same rollout (identical weights after step 1), but a non-zero KL now changes the returns.
    assert rows[1]["response/length_mean"] == runs[0.0][1]["response/length_mean"]
    assert rows[1]["critic/returns_mean"] != runs[0.0][1]["critic/returns_mean"]


# ----------------------------------------------------------------------------------------------
# 7. Resume exactness
# ----------------------------------------------------------------------------------------------

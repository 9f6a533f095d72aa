"""The parts that run on a GPU give what they give on the CPU: HFSampler's greedy output, completion log-probs and
their gradients, one training step of the real loop, and FSDP2 (``fully_shard``) at world size 1 over NCCL.

Every test here but the FSDP2 one over gloo needs CUDA and is skipped without it (CI has no GPU);
``scripts/gpu_check.sh`` runs them on a GPU machine. Each test is a ``_check_*(device)`` helper that compares ``device`` with the CPU, so the comparison code
itself can be exercised on a CPU with ``device="cpu"`` (``_check_fsdp2_gradients("cpu", "gloo")`` likewise).

Tolerances: float32 everywhere except the bf16 autocast case. The GPU's float32 kernels (cuBLAS, SDPA) sum in
other orders than the CPU's, so values agree to float32 rounding, not bit for bit: log-probs to 1e-4, gradients to
1e-3 relative. Under bf16 autocast, matmul inputs keep 8 significant bits; the bound (mean |Δ| < 0.02 nats) is
about 10x the CPU's own bf16-autocast error on the same batch (0.0017 with torch 2.13, ``_bf16_error("cpu")``).
"""
from __future__ import annotations

import socket

import pytest
import torch

from rlvr.models import load_model, tiny_random
from rlvr.types import SamplingParams

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = 12          # arith prompts of the sampler and log-prob checks


def _prompts(tokenizer, n: int = PROMPTS) -> list[list[int]]:
    from rlvr.data import build_problems
    from rlvr.models import encode_prompt

    return [encode_prompt(tokenizer, p.prompt) for p in build_problems("arith", size=n, seed=1)]


def _tiny_arith(device: str):
    model, tokenizer = load_model("tiny-arith", dtype=torch.float32, device=device)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------
# Sampler
# ----------------------------------------------------------------------------------------------

def _first_divergence_gap(model, prompt: list[int], a: list[int], b: list[int]) -> float:
    """The CPU model's gap between its two best logits where greedy rows ``a`` and ``b`` first differ."""
    k = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + a[:k]])).logits[0, -1]
    top = logits.topk(2).values
    return float(top[0] - top[1])


def _check_greedy_sampler(device: str) -> None:
    """Greedy rows on ``device`` equal the CPU's; a row may differ only where the CPU's top two logits tie to 1e-4
    (then float32 rounding decides the argmax, and the rest of the row follows from it)."""
    from rlvr.rollout import HFSampler

    cpu_model, tokenizer = _tiny_arith("cpu")
    dev_model, _ = _tiny_arith(device)
    prompts = _prompts(tokenizer)
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    cpu = HFSampler(cpu_model, tokenizer, max_batch_size=64).generate(prompts, params, n=1, seed=0)
    dev = HFSampler(dev_model, tokenizer, max_batch_size=64).generate(prompts, params, n=1, seed=0)
    rows = [(c[:int(lc)].tolist(), d[:int(ld)].tolist())
            for c, lc, d, ld in zip(cpu.completion_ids, cpu.lengths, dev.completion_ids, dev.lengths)]
    same = sum(a == b for a, b in rows)
    assert same >= len(rows) - 1, f"{len(rows) - same} of {len(rows)} greedy rows differ"
    for prompt, (a, b) in zip(prompts, rows):
        if a != b:
            assert _first_divergence_gap(cpu_model, prompt, a, b) < 1e-4, (a, b)
    assert any(len(a) > 2 for a, _ in rows)                            # the rows are real completions


@needs_cuda
def test_greedy_sampler_on_cuda_equals_cpu():
    _check_greedy_sampler("cuda")


# ----------------------------------------------------------------------------------------------
# Log-probs and their gradients
# ----------------------------------------------------------------------------------------------

def _sampled_batch(group: int = 4):
    """A GRPO-shaped batch: PROMPTS // 2 prompts × ``group`` CPU samples of tiny-arith at temperature 1."""
    from rlvr.rollout import HFSampler

    model, tokenizer = _tiny_arith("cpu")
    prompts = _prompts(tokenizer, PROMPTS // 2)
    roll = HFSampler(model, tokenizer).generate(prompts, SamplingParams(max_new_tokens=16), n=group, seed=3)
    return roll.prompt_ids, roll.completion_ids, roll.lengths


def _logprobs_and_grad(device: str, batch, *, share: bool, autocast: bool = False):
    from rlvr.logprobs import completion_logprobs

    model, _ = _tiny_arith(device)
    model.train()
    prompts, ids, lengths = batch
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
        lp, _ = completion_logprobs(model, prompts, ids.to(device), lengths.to(device), share_prompts=share)
    lp.sum().backward()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    return lp.detach().cpu(), grads.cpu()


def _check_logprobs(device: str, share: bool) -> None:
    batch = _sampled_batch()
    mask = torch.arange(batch[1].shape[1])[None, :] < batch[2][:, None]
    lp_cpu, g_cpu = _logprobs_and_grad("cpu", batch, share=share)
    lp_dev, g_dev = _logprobs_and_grad(device, batch, share=share)
    assert mask.sum() > 20 and lp_cpu[mask].abs().max() > 0.01     # real log-probs, not all ~0
    assert (lp_dev - lp_cpu)[mask].abs().max() <= 1e-4
    assert torch.all(lp_dev[~mask] == 0)
    assert (g_dev - g_cpu).norm() <= 1e-3 * g_cpu.norm()


def _bf16_error(device: str) -> float:
    """Mean |log-prob under bf16 autocast on ``device`` − float32 CPU log-prob| over the batch's tokens."""
    batch = _sampled_batch()
    mask = torch.arange(batch[1].shape[1])[None, :] < batch[2][:, None]
    lp_cpu, _ = _logprobs_and_grad("cpu", batch, share=True)
    lp_bf16, _ = _logprobs_and_grad(device, batch, share=True, autocast=True)
    return float((lp_bf16 - lp_cpu)[mask].abs().mean())


@needs_cuda
@pytest.mark.parametrize("share", [True, False], ids=["shared-prompts", "per-row"])
def test_completion_logprobs_and_gradients_on_cuda_equal_cpu(share):
    _check_logprobs("cuda", share)


@needs_cuda
def test_completion_logprobs_under_bf16_autocast_stay_close():
    err = _bf16_error("cuda")
    assert 0 < err < 0.02, err                                          # rounded (not float32), not garbled


# ----------------------------------------------------------------------------------------------
# One training step of the real loop
# ----------------------------------------------------------------------------------------------

STEP = ["steps=1", "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=16",
        "data.size=200", "data.eval_size=8", "eval.at_start=false", "log.progress=false", "log.tensorboard=false"]


def _train_one_step(device: str, run_dir):
    from safetensors.torch import load_file

    from rlvr.config import load_config
    from rlvr.metrics import read_metrics
    from rlvr.trainer import train

    cfg = load_config("configs/tiny_arith/grpo.yaml", [*STEP, f"model.device={device}"])
    train(cfg, run_dir=run_dir)
    row = next(r for r in read_metrics(run_dir) if "loss/policy" in r)
    return row, load_file(str(run_dir / "checkpoints/step_000001/model.safetensors"))


def _check_training_step(device: str, tmp_path) -> None:
    """Same samples (the sampler's uniforms are integer hashes, the same on every device), same rewards and
    advantages, a loss equal to float32 rounding, and an update (trained − initial weights) pointing the same way:
    AdamW's first step is about lr·sign(g), so elements whose gradient is ~0 may flip; the whole update may not."""
    cpu_row, cpu_w = _train_one_step("cpu", tmp_path / "cpu")
    dev_row, dev_w = _train_one_step(device, tmp_path / f"on-{device}")
    for key in ("reward/mean", "reward/accuracy", "response/length_mean", "adv/frac_zero"):
        assert dev_row[key] == pytest.approx(cpu_row[key], abs=1e-6), key
    assert dev_row["loss/policy"] == pytest.approx(cpu_row["loss/policy"], rel=1e-3, abs=1e-5)
    initial = dict(_tiny_arith("cpu")[0].named_parameters())
    d_cpu = torch.cat([(cpu_w[k] - initial[k].detach()).reshape(-1) for k in sorted(cpu_w)])
    d_dev = torch.cat([(dev_w[k] - initial[k].detach()).reshape(-1) for k in sorted(cpu_w)])
    assert d_cpu.norm() > 0
    assert torch.nn.functional.cosine_similarity(d_cpu, d_dev, dim=0) > 0.99
    assert (d_dev.norm() / d_cpu.norm() - 1).abs() < 0.01


@needs_cuda
def test_one_training_step_on_cuda_matches_cpu(tmp_path):
    _check_training_step("cuda", tmp_path)


# ----------------------------------------------------------------------------------------------
# FSDP2 at world size 1
# ----------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits.float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _check_fsdp2_gradients(device: str, backend: str) -> None:
    """A tiny Qwen2 with ``fully_shard`` on every decoder layer and the root, in a one-process group: the same loss
    and the same gradients (gathered with ``full_tensor``) as the unwrapped model."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    plain = tiny_random(0)[0].to(device).train()
    sharded = tiny_random(0)[0].to(device).train()
    ids = torch.randint(3, 99, (4, 24), generator=torch.Generator().manual_seed(0)).to(device)
    dist.init_process_group(backend, rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{_free_port()}")
    try:
        mesh = init_device_mesh(device, (1,))     # explicit: the default mesh is on cuda whenever CUDA is there
        for layer in sharded.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(sharded, mesh=mesh)
        loss_plain, loss_sharded = _lm_loss(plain, ids), _lm_loss(sharded, ids)
        loss_plain.backward()
        loss_sharded.backward()
        grads = {n: p.grad.full_tensor() for n, p in sharded.named_parameters()}
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(loss_sharded, loss_plain, rtol=1e-5, atol=1e-6)
    expected = {n: p.grad for n, p in plain.named_parameters()}
    assert set(grads) == set(expected) and len(grads) > 10
    for name, g in expected.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


@needs_cuda
def test_fsdp2_over_nccl_at_world_size_1_gives_the_unwrapped_gradients():
    _check_fsdp2_gradients("cuda", "nccl")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_fsdp2_over_gloo_on_the_cpu_gives_the_unwrapped_gradients():
    """The CPU twin (CI runs it): the same wrapping and comparison over gloo."""
    _check_fsdp2_gradients("cpu", "gloo")

"""Training forward+backward of completion_logprobs with HF "sdpa" attention vs rlvr's GQA path.

Usage: HF_HUB_OFFLINE=1 python scripts/bench_train_attention.py [--repeats 3] [--threads 2]
SmolLM2-135M-Instruct + LoRA r=16, 16 rows of 30-44 prompt tokens and <= 32 completion tokens. Prints
seconds per call for each path (the first call of each includes warm-up) and the largest log-prob and
gradient differences. The figures in docs/benchmarks.md come from this script.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from rlvr.attention import gqa_attention
from rlvr.logprobs import completion_logprobs
from rlvr.models import apply_lora, load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model("smollm2-135m-instruct")
    torch.manual_seed(0)
    model = apply_lora(model)
    g = torch.Generator().manual_seed(0)
    B, T = 16, 32
    prompts = [torch.randint(100, 40000, (int(torch.randint(30, 45, (1,), generator=g)),), generator=g).tolist()
               for _ in range(B)]
    completions = torch.randint(100, 40000, (B, T), generator=g)
    lengths = torch.randint(10, T + 1, (B,), generator=g)
    decoder = model.get_base_model()
    # completion_logprobs switches to the GQA path itself; "hf sdpa" forces HF's attention by pretending
    # the model is not on "sdpa" for the switch (it then runs HF's own sdpa implementation).
    paths = {"hf sdpa": lambda: _hf_only(decoder), "gqa": contextlib.nullcontext}
    times: dict[str, list[float]] = {k: [] for k in paths}
    out: dict[str, tuple] = {}
    for _ in range(args.repeats):
        for name, ctx in paths.items():
            model.zero_grad()
            t0 = time.perf_counter()
            with ctx():
                lp, _ = completion_logprobs(model, prompts, completions, lengths)
                lp.sum().backward()
            times[name].append(time.perf_counter() - t0)
            out[name] = (lp.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad])
    for name, ts in times.items():
        print(f"{name:8s} s/call: {', '.join(f'{t:.2f}' for t in ts)}")
    dlp = float((out["hf sdpa"][0] - out["gqa"][0]).abs().max())
    dg = max(float((a - b).abs().max()) for a, b in zip(out["hf sdpa"][1], out["gqa"][1]))
    print(f"max |Δ log-prob| {dlp:.2e}   max |Δ grad| {dg:.2e}")


@contextlib.contextmanager
def _hf_only(model):
    config = model.config
    saved = config._attn_implementation
    config._attn_implementation = "sdpa_hf"  # not "sdpa": gqa_attention leaves it alone
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    AttentionInterface.register("sdpa_hf", sdpa_attention_forward)
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionMaskInterface.register("sdpa_hf", sdpa_mask)
    try:
        yield
    finally:
        config._attn_implementation = saved


if __name__ == "__main__":
    assert gqa_attention  # the path under test is the default inside completion_logprobs
    main()

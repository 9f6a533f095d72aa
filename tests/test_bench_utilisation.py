"""The utilisation benchmark (``python -m benchmarks utilisation``): N_matmul from the module tree, the FLOP formulas,
the matmul-peak arithmetic, the table."""
from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from benchmarks import utilisation as u
from benchmarks.__main__ import main

SHAPE = u.ModelShape(n_matmul=1000, n_head=100, layers=2, d_attn=8, n_params=1200)


def _config(tied: bool) -> Qwen2Config:
    return Qwen2Config(vocab_size=50, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                       num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=tied)


@pytest.mark.parametrize("tied", [True, False])
def test_n_matmul_counts_every_linear_weight_and_the_head_once(tied):
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(_config(tied))
    h, d, heads, kv, inter, V, L = 24, 4, 6, 2, 40, 50, 3
    per_layer = h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * inter   # q, k+v, o, gate+up+down
    shape = u.model_shape(model)
    assert shape.n_matmul == L * per_layer + V * h == 3 * (576 + 384 + 576 + 2880) + 1200 == 14448
    assert shape.n_head == V * h and shape.layers == L and shape.d_attn == heads * d
    biases_norms = L * (heads * d + 2 * kv * d) + L * 2 * h + h
    embedding = V * h
    # all parameters: N_matmul + biases + norms, + the embedding only when it is not the head's weight
    assert shape.n_params == shape.n_matmul + biases_norms + (0 if tied else embedding)


def test_qwen2_05b_random_has_qwen2_05b_shape_and_parameter_count():
    model = u.build_qwen2_05b_random("meta")           # the same construction as on CUDA, without memory
    shape = u.model_shape(model)
    per_layer = 896 * 896 * 2 + 896 * 128 * 2 + 3 * 896 * 4864
    assert shape.n_matmul == 24 * per_layer + 151936 * 896 == 493_961_216
    assert shape.n_head == 151936 * 896 and shape.layers == 24 and shape.d_attn == 896
    assert shape.n_params == 494_032_768                # Qwen2-0.5B's published parameter count
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.rope_parameters["rope_theta"] == 1e6 and model.config.num_key_value_heads == 2


def test_generation_flops_hand_computed():
    assert u.generation_flops_per_token(SHAPE, 10) == 2 * 1000 + 4 * 2 * 8 * 10 == 2640
    # rows: prompt 3 → 2 tokens at ctx 3, 4; prompt 5 → 3 tokens at ctx 5, 6, 7; prompt 2 → none
    tokens, flops, mean_ctx = u.generation_flops(SHAPE, [3, 5, 2], [2, 3, 0])
    assert tokens == 5 and mean_ctx == 25 / 5
    assert flops == 5 * 2000 + 4 * 2 * 8 * 25 == 11600


def test_training_flops_hand_computed():
    assert u.training_flops_per_token(SHAPE, 16) == 6 * 1000 + 12 * 2 * 8 * 16 == 9072
    # the head (100 weights) is not applied at the 4 prompt positions of 16: 6·100·4/16 = 150 fewer
    assert u.training_flops_per_token(SHAPE, 16, prompt_len=4) == 9072 - 150
    with pytest.raises(ValueError, match="prompt_len"):
        u.training_flops_per_token(SHAPE, 16, prompt_len=16)


class FakeClock:
    """timer() alternates start / end readings; each end is the start plus the next scripted duration."""

    def __init__(self, durations):
        self.durations = list(durations)
        self.now, self.reads = 0.0, 0

    def __call__(self) -> float:
        self.reads += 1
        if self.reads % 2 == 0:
            self.now += self.durations.pop(0)
        return self.now


def test_matmul_peak_is_2n3_over_the_best_sample():
    clock, syncs = FakeClock([0.5, 0.375, 0.25, 0.3125]), []     # dyadic: the clock's sums are exact
    (row,) = u.matmul_peak([16], dtype=torch.float32, device="cpu", repeats=3, min_time=0.05, timer=clock,
                           sync=lambda: syncs.append(1))
    assert row["calls"] == 1 and row["seconds"] == 0.25 and row["flops"] == 2 * 16 ** 3 / 0.25
    assert not clock.durations and len(syncs) == 2 + 2 * 3    # synchronised before every timer reading


def test_matmul_peak_counts_every_call_of_a_sample():
    # one call took 1/64 s, so a 1/16 s sample runs 4 calls; best sample 0.05 s → 4·2n³/0.05
    clock = FakeClock([1 / 64, 0.06, 0.05])
    (row,) = u.matmul_peak([8], dtype=torch.float32, device="cpu", repeats=2, min_time=1 / 16, timer=clock)
    assert row["calls"] == 4
    assert row["flops"] == pytest.approx(4 * 2 * 8 ** 3 / 0.05, rel=1e-12)
    assert row["seconds"] == pytest.approx(0.05 / 4, rel=1e-12)


def test_vendor_peak_by_device_name_and_dtype():
    assert u.vendor_peak("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989.4e12
    assert u.vendor_peak("NVIDIA H200", torch.bfloat16) == 989.4e12
    assert u.vendor_peak("NVIDIA H100 PCIe", torch.bfloat16) == 756e12
    assert u.vendor_peak("NVIDIA H100 80GB HBM3", torch.float32) is None
    assert u.vendor_peak("NVIDIA A100-SXM4-80GB", torch.bfloat16) is None


def _phase_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ("matmul peak", "generation", "training"):
            rows[cells[0]] = cells
    return rows


def test_cli_smoke_tiny_random(tmp_path, capsys):
    path = tmp_path / "u.json"
    rc = main(["utilisation", "--model", "tiny-random", "--sizes", "128,256", "--repeats", "2",
               "--threads", "1", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "settings: model tiny-random; device cpu" in out and "dtype float32" in out and "N_matmul 504,192" in out
    rows = _phase_rows(out)
    assert set(rows) == {"matmul peak", "generation", "training"}
    assert rows["matmul peak"][4] == "1.0000"
    for phase in ("generation", "training"):
        frac = float(rows[phase][4])
        assert math.isfinite(frac) and 0 < frac < 2, (phase, frac)
        assert float(rows[phase][1].replace(",", "")) > 0
    report = json.loads(path.read_text())
    gen, train = (next(p for p in report["phases"] if p["phase"] == k) for k in ("generation", "training"))
    shape = u.ModelShape(**report["shape"])
    # 8 random prompts of 8 ids, no EOS: 8 × 16 tokens at ctx 8..23
    assert gen["tokens"] == 8 * 16 and gen["mean_ctx"] == 15.5
    assert gen["flops_per_token"] == pytest.approx(u.generation_flops_per_token(shape, 15.5))
    assert train["tokens"] == 8 * 24 and train["flops_per_token"] == u.training_flops_per_token(shape, 24, 8)
    for p in (gen, train):
        assert p["flops"] == pytest.approx(p["flops_per_token"] * p["tok_s"])
        assert p["of_matmul_peak"] == pytest.approx(p["flops"] / report["matmul_peak"])
    assert report["matmul_peak"] == max(r["flops"] for r in report["matmul"])


def test_table_on_cuda_shows_the_vendor_column():
    report = {"settings": {"model": "qwen2-0.5b-random", "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3",
                           "torch": "x", "threads": 16, "dtype": "bfloat16", "tf32": False, "date": "d", "repeats": 3},
              "shape": {"n_matmul": 10, "n_head": 2, "layers": 1, "d_attn": 4, "n_params": 12},
              "matmul": [{"n": 8192, "calls": 36, "seconds": 1.5e-3, "flops": 733e12}], "matmul_peak": 733e12,
              "vendor_peak": 989.4e12,
              "phases": [{"phase": "training", "tok_s": 1e5, "flops_per_token": 3e9, "flops_per_token_palm": 3.1e9,
                          "flops": 300e12, "of_matmul_peak": 300 / 733, "of_vendor_peak": 300 / 989.4,
                          "peak_memory": 2 ** 31, "rows": 8, "seq_len": 2048, "prompt_len": 128, "tokens": 16384,
                          "seconds": 0.16}]}
    text = "\n".join(u.format_table(report))
    assert "of vendor peak (989.4 TFLOP/s)" in text and "achieved TFLOP/s" in text
    assert "| training | 100,000.0 | 3G | 300.000 | 0.4093 | 0.3032 | 2.00 |" in text


@pytest.mark.parametrize("argv,needle", [
    (["--model", "gpt-9"], "--model"),
    (["--device", "tpu"], "--device"),
    (["--dtype", "float8"], "--dtype"),
])
def test_bad_choices_name_the_option(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["utilisation", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "invalid choice" in err


def test_cuda_without_cuda_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["utilisation", "--device", "cuda"]) == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


def test_unsupported_dtype_is_a_clear_error(monkeypatch, capsys):
    real_mm = torch.mm

    def mm(a, b, *args, **kwargs):
        if a.dtype == torch.bfloat16:
            raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'BFloat16'")
        return real_mm(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "mm", mm)
    assert main(["utilisation", "--dtype", "bfloat16"]) == 2
    assert "--dtype bfloat16: matmuls in this dtype are not supported on cpu" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["--model", "tiny-arith", "--batch", "10", "--group-size", "4"], "--group-size 4 must divide --batch 10"),
    (["--model", "tiny-random", "--prompt-len", "8", "--seq-len", "8"], "--seq-len (8) must exceed --prompt-len (8)"),
])
def test_inconsistent_sizes_name_the_options(argv, needle, capsys):
    assert main(["utilisation", *argv]) == 2
    assert needle in capsys.readouterr().err

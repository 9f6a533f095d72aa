"""The generation benchmark (``python -m benchmarks generate``): its token count of HF output by hand, and a tiny run
of both methods."""
import pytest
import torch

from benchmarks.generate import counted_tokens, run
from rlvr.models import tiny_random

EOS, PAD = 2, 0                     # tiny-random's character tokenizer


@pytest.fixture(scope="module")
def tiny():
    before = torch.get_num_threads()
    torch.set_num_threads(1)        # the tiny model gains nothing from intra-op threads
    yield tiny_random(0)
    torch.set_num_threads(before)


def test_counted_tokens_by_hand():
    new = torch.tensor([[5, 6, EOS, PAD], [EOS, PAD, PAD, PAD], [5, 5, 5, 5], [5, PAD, 7, PAD], [PAD] * 4])
    # up to and including the first EOS; trailing pads (a stop-string finish) do not count, inner ones do
    assert counted_tokens(new, [EOS], PAD) == 3 + 1 + 4 + 3 + 0
    assert counted_tokens(new, [EOS], EOS) == 3 + 1 + 4 + 4 + 4


def test_run_times_both_methods_and_reports_ratios(tiny):
    model, tok = tiny
    rows = run(model, tok, prompts=2, n=2, max_new_tokens=3, repeats=1)
    assert [r["method"] for r in rows] == ["HFSampler", "HF generate"]
    assert rows[1]["ratio"] == 1.0 and all(r["tok_s"] > 0 and 4 <= r["tokens"] <= 12 for r in rows)
    assert rows[0]["ratio"] == pytest.approx(rows[0]["tok_s"] / rows[1]["tok_s"])

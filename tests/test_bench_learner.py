"""The learner benchmark's table: medians per part and their ratio to world size 1, from hand-made step times."""
from __future__ import annotations

import argparse

from benchmarks import learner


def test_the_table_gives_medians_and_ratios():
    one = {"train": [1.0, 3.0, 2.0], "forward": [0.4] * 3, "backward": [0.5] * 3, "optim": [0.1] * 3,
           "step": [2.0, 2.0, 4.0]}
    two = {"train": [3.0, 3.0, 9.0], "forward": [1.0] * 3, "backward": [1.5] * 3, "optim": [0.2] * 3,
           "step": [5.0, 5.0, 5.0]}
    args = argparse.Namespace(config="c.yaml", overrides=[], strategy="fsdp2", device="cpu", threads=2, repeats=1,
                              steps=5, warmup=2, world=2)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
            for line in learner._table({1: one, 2: two}, args).splitlines() if line.startswith("| ")}
    assert rows["update (perf/train_s)"] == ["2.000", "3.000", "1.50×"]
    assert rows["backward"] == ["0.500", "1.500", "3.00×"]
    assert rows["whole step (perf/step_s)"] == ["2.000", "5.000", "2.50×"]

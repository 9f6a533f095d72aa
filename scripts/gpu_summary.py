"""The two Python parts of scripts/gpu_check.sh.

``python scripts/gpu_summary.py versions FILE``: print the interpreter, torch (its CUDA and NCCL), the GPU and the
Hugging Face packages, and write them to FILE as JSON.

``python scripts/gpu_summary.py summary OUT WORK``: write ``OUT/gpu_summary.md`` from what the check left in OUT
(pytest's JUnit XML, the run's metrics.jsonl, the benchmark's JSON) and WORK (versions.json, nvidia-smi.txt,
steps.tsv: one line per step with its exit status and seconds), and print it.
"""
from __future__ import annotations

from importlib import metadata
import json
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

PACKAGES = ("transformers", "peft", "accelerate", "safetensors", "tokenizers", "huggingface-hub", "numpy", "sympy",
            "math-verify", "latex2sympy2_extended", "pytest", "pytest-xdist")
RUN_KEYS = ("reward/mean", "reward/accuracy", "loss/policy", "policy/entropy", "response/length_mean",
            "train/grad_norm", "perf/step_s", "perf/gen_tokens_per_s", "perf/train_tokens_per_s")


def versions() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "gpu": None, "nccl": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        nccl = torch.cuda.nccl.version()
        info["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
    for name in PACKAGES:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    return info


def junit(path: Path) -> list[str]:
    """Markdown lines: the counts of a pytest JUnit report and every failed, erroring or skipped test."""
    if not path.is_file():
        return [f"- no report ({path.name} was not written)"]
    suite = ET.parse(path).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    lines = [f"- {passed} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped "
             f"({float(suite.get('time', 0)):.1f} s)"]
    for case in suite.iter("testcase"):
        for kind in ("failure", "error", "skipped"):
            el = case.find(kind)
            if el is not None:
                msg = (el.get("message") or "").splitlines()[0][:200] if el.get("message") else ""
                lines.append(f"  - {kind}: `{case.get('classname')}::{case.get('name')}` {msg}")
    return lines


def run_lines(path: Path) -> list[str]:
    """Markdown lines: held-out accuracy at start and end, and the last training step's metrics."""
    if not path.is_file():
        return ["- no metrics (the run did not start)"]
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    train = [r for r in rows if "loss/policy" in r]
    lines = [f"- held-out accuracy: " + ", ".join(f"step {s}: {a:.3f}" for s, a in evals)]
    if train:
        last = train[-1]
        lines.append(f"- {len(train)} steps; mean step time {sum(r['perf/step_s'] for r in train) / len(train):.2f} s")
        lines += ["", "| metric (last step) | value |", "|---|---:|"]
        lines += [f"| {k} | {last[k]:.4g} |" for k in RUN_KEYS if isinstance(last.get(k), (int, float))]
    return lines


def bench_lines(path: Path) -> list[str]:
    if not path.is_file():
        return [f"- no figures ({path.name} was not written)"]
    from benchmarks.utilisation import format_table

    return format_table(json.loads(path.read_text()))


def summary(out: Path, work: Path) -> str:
    v = json.loads((work / "versions.json").read_text()) if (work / "versions.json").is_file() else {}
    steps = [line.split("\t") for line in (work / "steps.tsv").read_text().splitlines()] \
        if (work / "steps.tsv").is_file() else []
    lines = ["# GPU check (scripts/gpu_check.sh)", "", "## Machine", ""]
    lines += [f"- {k}: {val}" for k, val in v.items()]
    smi = work / "nvidia-smi.txt"
    if smi.is_file():
        lines += ["", "```", smi.read_text().rstrip(), "```"]
    lines += ["", "## Steps", "", "| step | exit status | seconds |", "|---|---:|---:|"]
    lines += [f"| {name} | {rc}{' (timeout)' if rc in ('124', '137') else ''} | {secs} |" for name, rc, secs in steps]
    lines += ["", "## CUDA tests (tests/test_cuda.py)", ""] + junit(out / "cuda_tests.xml")
    lines += ["", "## CPU tests under this machine's torch", ""] + junit(out / "cpu_tests.xml")
    lines += ["", "## GRPO on tiny-arith (configs/tiny_arith/grpo.yaml)", ""] + run_lines(out / "grpo_metrics.jsonl")
    lines += ["", "## Utilisation (python -m benchmarks utilisation)", ""] + bench_lines(out / "utilisation.json")
    lines += ["", "### Training only, TF32 allowed (--tf32 --skip-generation)", ""]
    lines += bench_lines(out / "utilisation_tf32.json")
    text = "\n".join(lines) + "\n"
    (out / "gpu_summary.md").write_text(text)
    return text


def main(argv: list[str]) -> int:
    if argv[:1] == ["versions"] and len(argv) == 2:
        info = versions()
        Path(argv[1]).write_text(json.dumps(info, indent=1) + "\n")
        print("\n".join(f"{k}: {val}" for k, val in info.items()))
        return 0
    if argv[:1] == ["summary"] and len(argv) == 3:
        print(summary(Path(argv[1]), Path(argv[2])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

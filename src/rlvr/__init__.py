"""rlvr: reinforcement learning with verifiable rewards for language-model post-training.

Layers, bottom up (imports only point down):
  registry, types, seeding          name -> entry registries; Problem / SamplingParams / Rollout; derived seeds
  advantages, losses, kl            pure math on tensors (torch only) with registries
  bandit                            an exactly solvable toy policy built on the math
  config, metrics                   the TrainConfig tree; a run's logs (metrics.jsonl) and their reader
  attention, logprobs, models,      the model side: GQA attention, chunked log-probs, presets and LoRA,
    value                             the critic's value model
  data, rewards                     problems (tasks, files, splits); verifiers, the reward pool, scoring
  rollout                           the Sampler protocol, HFSampler, rollout workers (threads, Ray), vLLM
  eval                              pass@k, maj@k, max@k, intervals (Estimate) and the held-out evaluation
  trainer                           the synchronous and asynchronous loops (public: train, RunSummary,
                                      PromptStream, build_problems, make_encoder, trainer.staleness)
  plot, compare, sweep              curves of a run, runs side by side, sweeps of runs with their report
  cli                               the `rlvr` command

Outside the package (scripts of the repository, not installed): ``benchmarks/`` (``python -m benchmarks``) and
``studies/`` (``python -m studies``) reach rlvr only through the public names above and runs' metrics.jsonl.
"""

__version__ = "0.1.0"

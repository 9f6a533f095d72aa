"""rlvr: reinforcement learning with verifiable rewards for language-model post-training.

Layers, bottom up (imports only point down):
  advantages, losses, kl            pure math on tensors (torch only) with registries
  bandit                            an exactly solvable toy policy built on the math
  bench, cli                        benchmarks and the command line
"""

__version__ = "0.1.0"

"""Preloaded by RewardPool's fork server: importing this module warms math-verify in that process.

The server forks every worker, so the workers start with the parser built and sympy's lazy imports
done instead of paying ~1 s each (see rlvr.rewards.pool.WARM_UP_CHECKS). Nothing else imports it.
"""
from rlvr.rewards.pool import warm_up

warm_up()

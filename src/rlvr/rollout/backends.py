"""The rollout-backend registry: what ``rollout.backend`` names, i.e. where the async trainer's rollout workers run.

A backend implements ``rlvr.rollout.pool.Backend`` (``put_weights``, ``start_worker``, ``close``); its registered
builder makes one from the sampler factory every worker calls and the config's ``rollout`` section::

    from rlvr.rollout import backends

    @backends.register("my_backend")
    def my_backend(make_sampler, rollout):
        return MyBackend(make_sampler, hosts=rollout.num_workers)

It is named by its name or its import path (``rollout.backend=my_package.my_module:my_backend``);
``make_backend(name, factory, cfg.rollout)`` is what the trainer calls. Nothing here imports Ray: the ``ray``
builder imports ``rlvr.rollout.ray_backend`` when it runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from rlvr.registry import Registry

if TYPE_CHECKING:
    from rlvr.config import RolloutConfig

__all__ = ["BackendSpec", "register", "backend", "names", "make_backend", "thread_backend", "ray_backend"]


@dataclass(frozen=True)
class BackendSpec:
    """A registered rollout backend and what the trainer must know about it.

    fn: ``fn(make_sampler: () -> sampler, rollout: RolloutConfig) -> Backend``.
    in_process: workers are threads of the trainer's process, so they share its CPU cores with the learner
        (the async trainer then gives each of generation and training half the cores unless model.threads is set).
    """

    name: str
    fn: Callable[..., Any]
    in_process: bool = False


_REGISTRY: Registry[BackendSpec] = Registry("rollout backend", BackendSpec,
                                            decorator="rlvr.rollout.backends.register")
register = _REGISTRY.register  # decorator: register(name, **BackendSpec facts)
backend = _REGISTRY.entry      # backend(name or its 'module:function' path) -> BackendSpec


def names() -> list[str]:
    """Sorted names of the registered backends."""
    return _REGISTRY.names()


def make_backend(name: str, factory: Callable[[], Any], rollout: RolloutConfig) -> Any:
    """The backend registered as ``name`` (or at that import path), built for ``factory`` and ``rollout``."""
    return backend(name).fn(factory, rollout)


@register("thread", in_process=True)
def thread_backend(make_sampler: Callable[[], Any], rollout: RolloutConfig) -> Any:
    """Workers are threads of this process (``rlvr.rollout.pool.ThreadBackend``): the default, and the one to
    debug with."""
    from rlvr.rollout.pool import ThreadBackend

    return ThreadBackend(make_sampler)


@register("ray")
def ray_backend(make_sampler: Callable[[], Any], rollout: RolloutConfig) -> Any:
    """Workers are Ray actors (``rlvr.rollout.ray_backend.RayBackend``), sized and placed by ``rollout.ray``."""
    from rlvr.rollout.ray_backend import RayBackend

    r = rollout.ray
    return RayBackend(make_sampler, address=r.address, num_cpus=r.cpus_per_worker, threads=r.threads_per_worker)

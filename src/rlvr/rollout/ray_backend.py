"""RayBackend: rollout workers as Ray actors, one actor (one process, its own model copy) per worker slot.

Use it with ``rlvr.rollout.pool.WorkerPool``::

    pool = WorkerPool(RayBackend(make_sampler, threads=1), num_workers=2, timeout_s=300)

This is the only module of rlvr that imports ``ray`` (pinned at 2.60.0 in pyproject).

Where the actors run (``address``):

* A Ray runtime already initialised in this process (``ray.is_initialized()``) is used as it is, whatever
  ``address`` says, and ``close()`` leaves it running (tests and applications that manage Ray themselves).
* ``address=None``: a local Ray is started (``ray.init()``; it takes the machine's CPUs unless ``init_kwargs``
  gives ``num_cpus``), and ``close()`` shuts it down. (Ray's rule: ``ray.init()`` joins instead when
  ``RAY_ADDRESS`` is set or a cluster started with ``ray start`` on this machine is recorded in the temp dir.)
* ``address="auto"`` joins the cluster already running on this machine (``ray start --head``);
  ``address="host:6379"`` joins a cluster's GCS from one of its nodes; ``address="ray://host:10001"`` connects
  through the Ray Client server of a remote head node. ``close()`` disconnects (``ray.shutdown()``) without
  stopping the cluster.

``init_kwargs`` is passed on to ``ray.init`` (e.g. ``num_cpus``, ``include_dashboard=False``,
``log_to_driver=False``, ``_temp_dir``). Ray writes its session files and per-run logs under ``<temp
dir>/session_*`` (the system temp dir's ``ray/`` unless ``_temp_dir`` says otherwise).

Token authentication (Ray 2.60). Sources: ``ray/_private/authentication/authentication_token_setup.py`` and
``ray/_private/worker.py`` (``init``) of the installed 2.60.0 wheel;
https://docs.ray.io/en/latest/ray-security/token-auth.html and
https://docs.ray.io/en/master/ray-core/internals/token-authentication.html; ray-project/ray PR #57835:

* The mode comes only from the environment variable ``RAY_AUTH_MODE`` (``token`` or ``disabled``; setting it in
  ``_system_config`` is an error). The docs for 2.52 still say "disabled by default"; in 2.60 a local start
  (``ray.init()`` without an address) turns it on when the variable is unset: it sets ``RAY_AUTH_MODE=token`` in
  ``os.environ`` of this process (so the raylet, GCS and workers it spawns inherit it) and logs a warning.
* The token is looked up in this order: ``RAY_AUTH_TOKEN`` (the token itself), ``RAY_AUTH_TOKEN_PATH`` (a file;
  unreadable or empty is fatal, no fallback), then ``~/.ray/auth_token``. A local start that finds none generates
  a random token and writes it to ``~/.ray/auth_token`` (always that default path, never ``RAY_AUTH_TOKEN_PATH``).
  Ray's own processes are started with this process's environment, so they find the same token.
* Joining (an address, or none but see above): no token is ever generated. With ``"auto"`` (or no address and
  a cluster found on this machine), token mode is switched on when a token is found in one of the three places;
  with an explicit address (``host:port``, ``ray://``) set ``RAY_AUTH_MODE=token`` yourself and provide the
  cluster's token through ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` / ``~/.ray/auth_token`` (``ray
  get-auth-token`` on the head prints it), or the connection fails with an authentication error. The Ray Client
  (``ray://``) sends the same token in its gRPC metadata. Opt out for a whole cluster with
  ``RAY_AUTH_MODE=disabled`` on every node.
* What this backend adds: when it starts a new local Ray with a ``_temp_dir`` in ``init_kwargs`` and neither
  ``RAY_AUTH_TOKEN`` nor ``RAY_AUTH_TOKEN_PATH`` is set (and the mode is not ``disabled``), it writes a fresh random
  token to ``<_temp_dir>/auth_token`` (mode 0600) and points ``RAY_AUTH_TOKEN_PATH`` at it, so nothing is written
  to the user's ``~/.ray``. ``close()`` shuts Ray down, restores the three variables as they were before the
  start (Ray itself leaves ``RAY_AUTH_MODE=token`` behind) and clears Ray's cached config and token, so a later
  ``ray.init`` in this process does not reuse the old token.

Workers: each slot is an actor of ``ray.remote(num_cpus=num_cpus)`` (one ``generate`` at a time; ``publish``, for
in-flight weight updates, runs in its own concurrency group, so it reaches a ``generate`` in progress) that builds
``RolloutWorker(make_sampler, resolve=ray.get)`` in its process; with ``threads`` it first calls
``torch.set_num_threads(threads)``. ``make_sampler`` is sent to the actor with Ray's cloudpickle: a module-level
function, ``functools.partial`` or small dataclass with ``__call__`` is pickled by reference, so its module must
be importable in the worker processes (installed, under the driver's working directory, or on ``PYTHONPATH`` /
``runtime_env``; for a script's own module use ``ray.cloudpickle.register_pickle_by_value(module)``).

Weights: ``put_weights`` stores the dict once in the object store and returns ``[ref]``. The list keeps Ray from
resolving the reference when it is passed as an argument, so a worker fetches the weights (``ray.get``) only when
the version is newer than its own (``RolloutWorker.generate``): once per version per worker.

Faults: ``WorkerHandle.submit`` returns ``ref.future()``; a worker process that exits or is killed makes it raise
``ray.exceptions.RayActorError`` (an exception inside the sampler: ``RayTaskError``), and the pool restarts the
slot. ``kill`` is ``ray.kill(actor, no_restart=True)``, which force-stops the actor's process, so a hung call
stops too.
An actor's start (a process, the imports, ``make_sampler()``) is not counted in the pool's ``timeout_s``: the
first ``submit`` to a fresh actor waits until it is constructed (at most ``start_timeout_s``; a failed or slow
start becomes the failure of that call), so a model that loads slowly is not mistaken for a hung worker.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import secrets
from pathlib import Path
from typing import Any, Callable

try:
    import ray
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("rlvr.rollout.ray_backend needs Ray: `pip install -c constraints.txt ray==2.60.0` "
                      "(or use rlvr.rollout.pool.ThreadBackend, which needs nothing)") from e

import torch

from rlvr.rollout.pool import RolloutWorker

__all__ = ["RayBackend", "RayWorkerHandle"]

_AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _resolve(handle: list) -> Any:
    """A weights handle (``[ObjectRef]``) -> the weights dict, fetched from the object store."""
    return ray.get(handle[0])


def _starts_new_cluster(address: str | None, temp_dir: str | None) -> bool:
    """Whether ``ray.init(address)`` would start a new local Ray rather than join one (RAY_ADDRESS, ``ray start``)."""
    if address is not None:
        return False
    try:
        from ray._private.services import canonicalize_bootstrap_address  # what ray.init itself asks
        return canonicalize_bootstrap_address(None, temp_dir) is None
    except Exception:  # noqa: BLE001 - private API; fall back to the public half of the rule
        return not os.environ.get("RAY_ADDRESS")


class _RolloutActor:
    """The body of a worker actor: a RolloutWorker in this process."""

    def __init__(self, make_sampler: Callable[[], Any], threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.worker = RolloutWorker(make_sampler, resolve=_resolve)

    def ready(self) -> int:
        return os.getpid()

    def generate(self, prompt_ids, params, n, seed, version, weights):
        return self.worker.generate(prompt_ids, params, n, seed, version, weights)

    @ray.method(concurrency_group="weights")
    def publish(self, version, weights):
        """Runs on its own thread (concurrency group "weights"), so it reaches a ``generate`` in progress."""
        self.worker.publish(version, weights)


class RayWorkerHandle:
    """The pool's handle on one worker actor."""

    def __init__(self, actor: Any, index: int, start_timeout_s: float) -> None:
        self.actor = actor
        self.index = index
        self._ready_ref = actor.ready.remote()
        self._start_timeout_s = start_timeout_s
        self._started = False

    def submit(self, prompt_ids, params, n, seed, version, weights) -> cf.Future:
        if not self._started:
            try:
                ray.get(self._ready_ref, timeout=self._start_timeout_s)
            except Exception as e:  # noqa: BLE001 - the pool treats it as this call's failure
                fut: cf.Future = cf.Future()
                if isinstance(e, ray.exceptions.GetTimeoutError):
                    e = TimeoutError(f"rollout actor {self.index} did not start within {self._start_timeout_s:g} s")
                fut.set_exception(e)
                return fut
            self._started = True
        return self.actor.generate.remote(prompt_ids, params, n, seed, version, weights).future()

    def publish(self, version: int, weights: Any) -> None:
        """Newer weights to the actor now (not awaited; a dead actor is the next call's failure)."""
        try:
            self.actor.publish.remote(version, weights)
        except Exception:  # noqa: BLE001 - a dead actor: its next submit reports the failure
            pass

    def kill(self) -> None:
        try:
            ray.kill(self.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead, or Ray already shut down
            pass


class RayBackend:
    """Rollout workers as Ray actors (see the module docstring); implements ``rlvr.rollout.pool.Backend``.

    Args:
        make_sampler: builds the sampler inside each actor; picklable (module-level function, partial, dataclass).
        address: None starts a local Ray; "auto", "host:6379" or "ray://host:10001" join a cluster. Ignored when
            Ray is already initialised in this process.
        num_cpus: CPUs each actor reserves (Ray schedules at most total_cpus / num_cpus actors at once).
        threads: ``torch.set_num_threads`` in each actor. Default: torch's choice in a Ray worker, where Ray sets
            ``OMP_NUM_THREADS`` to the actor's ``num_cpus`` (at least 1) unless it is set already.
        init_kwargs: more arguments for ``ray.init``.
        start_timeout_s: how long the first call to a fresh actor waits for it to be constructed.
    """

    def __init__(self, make_sampler: Callable[[], Any], *, address: str | None = None, num_cpus: float = 1.0,
                 threads: int | None = None, init_kwargs: dict | None = None,
                 start_timeout_s: float = 600.0) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"RayBackend: threads must be a positive int or None, got {threads!r}")
        if not num_cpus >= 0:
            raise ValueError(f"RayBackend: num_cpus must be >= 0, got {num_cpus!r}")
        self.make_sampler = make_sampler
        self.threads = threads
        self.num_cpus = num_cpus
        self.start_timeout_s = float(start_timeout_s)
        self.owns_ray = False
        self._saved_env: dict[str, str | None] | None = None
        self._handles: list[RayWorkerHandle] = []
        if not ray.is_initialized():
            self._init_ray(address, dict(init_kwargs or {}))
        self._actor_cls = ray.remote(num_cpus=num_cpus, max_restarts=0, max_concurrency=1,
                                     concurrency_groups={"weights": 1})(_RolloutActor)

    def _init_ray(self, address: str | None, kwargs: dict) -> None:
        saved = {k: os.environ.get(k) for k in _AUTH_ENV}
        temp_dir = kwargs.get("_temp_dir")
        if (temp_dir and (saved["RAY_AUTH_MODE"] or "").lower() != "disabled" and not saved["RAY_AUTH_TOKEN"]
                and not saved["RAY_AUTH_TOKEN_PATH"] and _starts_new_cluster(address, temp_dir)):
            token_path = Path(temp_dir) / "auth_token"
            token_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
        self._saved_env = saved
        try:
            ray.init(address=address, **kwargs)
        except BaseException:
            self._restore_env()
            raise
        self.owns_ray = True

    def _restore_env(self) -> None:
        saved, self._saved_env = self._saved_env, None
        if saved is None:
            return
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        try:  # Ray caches the mode (RayConfig) and the token (C++ loader); refresh the config first, as Ray's tests do
            from ray._raylet import AuthenticationTokenLoader, Config
            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()
        except Exception:  # noqa: BLE001 - private API; only a later ray.init in this process would notice
            pass

    def put_weights(self, version: int, weights: dict[str, torch.Tensor]) -> list:
        return [ray.put(weights)]

    def start_worker(self, index: int) -> RayWorkerHandle:
        handle = RayWorkerHandle(self._actor_cls.remote(self.make_sampler, self.threads), index,
                                 self.start_timeout_s)
        self._handles.append(handle)
        return handle

    def close(self) -> None:
        """Kill the actors this backend started; shut Ray down (or disconnect) if this backend initialised it."""
        handles, self._handles = self._handles, []
        for h in handles:
            h.kill()
        if self.owns_ray:
            self.owns_ray = False
            ray.shutdown()
            self._restore_env()

"""RewardPool: run verifiers in worker processes with a per-item timeout, surviving hangs and crashes.

Why processes: math-verify times out with SIGALRM, which only works in a process's main thread, and
a pathological answer can still hang in C code (sympy/gmpy) or kill its process. Each worker is a
separate process calling the verifier in its main thread; the parent gives every item ``timeout_s``
seconds from the moment a worker takes it. Then:
  * answer in time    -> the verifier's VerifyResult;
  * out of time       -> VerifyResult(0.0, None, "timeout after ... s"); the worker is killed and replaced;
  * worker died       -> VerifyResult(0.0, None, "worker crashed: exit code N" / "...: signal SIGSEGV");
                         the worker is replaced.
Both are logged (logger "rlvr.rewards.pool", WARNING) and never raised from ``score``. A verifier
that *raises* is a bug (bad gold data, a broken custom verifier), not a bad completion: ``score``
finishes the batch, then raises RewardPoolError (a ValueError) naming the first failing item.

Protocol (up to PIPELINE_DEPTH = 2 items queued per worker, answered in order):
  parent -> worker: (verifier name, completion, gold) or None (= exit)
  worker -> parent: ("ready", pid) once after start-up, then ("ok", VerifyResult) or ("error", text)
An item's clock starts when its worker can start it (sent to an idle worker, or the previous answer
read), so a timeout or a crash pins down exactly one item; the others queued on that worker go back
to the front of the batch's queue unscored.
Verifiers are looked up by name inside the worker (registry names and "module:function" paths; the
worker inherits the parent's sys.path); a verifier registered outside rlvr is sent as the import path of
its function (``verifiers.portable_name``), whose import registers it in the worker. Identical (verifier,
completion, gold) items in one batch are scored once. Results keep the input order.

Start method: "forkserver" by default. fork is unsafe in a trainer that already runs torch's
thread pools (and forked siblings would inherit each other's pipes). spawn starts a fresh interpreter
that imports and warms math-verify (WARM_UP_CHECKS) for every start *and* every restart; forkserver
does that once per process, in its server (module rlvr.rewards._warm, set as the server's preload,
which is process-wide), and forks warm workers. The constructor returns at once; the first
``score`` waits for the workers. Measured on the 2-core dev machine while it was saturated by other
jobs (load average ~7): first pool of a process answers its first batch after 3.3 s, later pools
after 0.25 s, and a crashed worker is replaced and working again within 0.2-0.25 s; with spawn the
same take 5.2 s and 5.5 s. The fork server is shared multiprocessing infrastructure and lives until
the main process exits; the workers themselves are gone after ``close()``. Both methods re-run the
main script in each worker unless it was started with ``-m``, so a script that creates a pool needs
the ``if __name__ == "__main__":`` guard (without it ``score`` raises a RuntimeError saying so).

Each worker also holds the read end of a "lifeline" pipe whose write end only the parent holds: if
the parent dies, even a worker stuck inside a verifier exits.
"""
from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Sequence

from rlvr.rewards.verifiers import VerifyResult, get_verifier, portable_name, verify_math

__all__ = ["RewardPool", "RewardPoolError"]

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
"""Seconds a new worker may take to import and warm up before the pool gives up (RuntimeError)."""
CLOSE_GRACE_S = 1.0
"""Seconds ``close`` waits for workers to exit on request before killing them."""
MAX_START_FAILURES = 3
"""Consecutive workers dying before they are ready that make ``score`` give up (RuntimeError)."""
PIPELINE_DEPTH = 2
"""Items in flight per worker: the next one is already waiting when the worker finishes one, so
it never idles while the parent (busy or descheduled) reads a result."""
PIPELINE_MAX_CHARS = 8192
"""Only items up to this many characters (completion + gold) are queued behind a busy worker: the
queued message must fit the OS pipe buffer (64 KiB on Linux; 4 bytes per character at worst), or
``send`` would block the parent for as long as the worker's current item runs, timeouts included."""


class RewardPoolError(ValueError):
    """A verifier raised (bad gold data or a broken verifier); names the item."""


# ----------------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------------

def _exit_when_parent_dies(lifeline: Connection) -> None:
    """Daemon thread: the lifeline becomes readable (EOF) only when the parent is gone."""
    wait([lifeline])
    os._exit(0)


def _checked_call(verifier: Any, name: str, completion: str, gold: str) -> VerifyResult:
    """Run one verifier and hold it to the contract (a VerifyResult), in a worker or in-process."""
    result = verifier(completion, gold)
    if not isinstance(result, VerifyResult):
        raise TypeError(f"verifier {name!r} returned {type(result).__name__}, expected VerifyResult")
    return result


WARM_UP_CHECKS = (
    ("\\boxed{1}", "1"), ("\\boxed{\\frac{1}{2}}", "0.5"), ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ("\\boxed{(x+1)^2}", "x^2+2x+1"), ("\\boxed{\\{1,2\\}}", "\\{2,1\\}"), ("\\boxed{(1,2]}", "[1,2)"),
    ("\\boxed{50\\%}", "0.5"), ("\\boxed{x > 2}", "(2, \\infty)"),
)
"""One check per kind of comparison. The first check of a kind in a process costs up to ~0.7 s
(math-verify builds its parser, sympy imports lazily); a worker that paid that inside a scored item
could time out on a legitimate answer."""


def warm_up() -> None:
    """Run WARM_UP_CHECKS once in this process (~1 s the first time, a few ms after)."""
    for completion, gold in WARM_UP_CHECKS:
        verify_math(completion, gold)


def _worker_main(conn: Connection, lifeline: Connection) -> None:
    """Worker process body: warm up, say ready, then score items until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    threading.Thread(target=_exit_when_parent_dies, args=(lifeline,), daemon=True).start()
    warm_up()  # already done in the fork server (module _warm): then only a few ms
    conn.send(("ready", os.getpid()))
    verifiers: dict[str, Any] = {}
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        name, completion, gold = msg
        try:
            if name not in verifiers:
                verifiers[name] = get_verifier(name)
            conn.send(("ok", _checked_call(verifiers[name], name, completion, gold)))
        except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it
            conn.send(("error", f"{type(err).__name__}: {err}"))


# ----------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------

@dataclass
class _Worker:
    process: Any  # a multiprocessing Process of the pool's context
    conn: Connection
    lifeline: Connection  # write end, never written: the worker exits when it closes (parent gone)
    started_at: float
    ready: bool = False
    queue: deque[int] = field(default_factory=deque)
    """Items sent and not yet answered, oldest first (indices into the batch's unique items);
    the worker is busy with ``queue[0]``."""
    deadline: float = math.inf
    """When ``queue[0]`` runs out of time: timeout_s after the worker could start it."""


def _exit_text(process: Any) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class RewardPool:
    """Score completions with named verifiers in ``num_workers`` processes (0 = in this process).

    num_workers: worker processes; 0 runs verifiers in the calling thread (debugging; then a
        verifier's own timeout is the only one, e.g. math-verify's, and a crash is this process's).
    timeout_s: seconds one item may take in a worker before it is killed and scored 0.0.
    start_method: "forkserver" (default, see the module docstring) or "spawn". Not "fork": besides
        torch's threads, forked siblings would inherit each other's pipes and outlive the parent.
    Use as a context manager or call ``close()``. ``score`` may be called from any thread; calls
    are serialised.
    """

    def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, *, start_method: str = "forkserver"):
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < math.inf):
            raise ValueError(f"timeout_s must be a positive finite number, got {timeout_s!r}")
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', got {start_method!r}")
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.start_method = start_method
        self.restarts = 0
        """Workers replaced after a timeout or a crash, over the pool's life."""
        self._start_failures = 0  # consecutive workers that died before saying "ready"
        self._lock = threading.Lock()
        self._closed = False
        self._workers: list[_Worker] = []
        self._starter: threading.Thread | None = None
        self._start_error: Exception | None = None
        if num_workers:
            self._ctx = mp.get_context(start_method)
            if start_method == "forkserver":
                # Import and warm math-verify once in the fork server, so every worker forks warm;
                # a no-op if this process's fork server already runs.
                self._ctx.set_forkserver_preload(["rlvr.rewards._warm"])
            # The first fork server of a process takes ~1 s (more on a busy machine) to import and
            # warm up before it forks anything: start in the background so the caller can load its
            # model meanwhile. The first score() or close() waits for it.
            self._starter = threading.Thread(target=self._start_initial_workers, name="rlvr-reward-pool-start",
                                             daemon=True)
            self._starter.start()

    # -- lifecycle ---------------------------------------------------------------------------

    def _start_initial_workers(self) -> None:
        try:
            for _ in range(self.num_workers):
                self._workers.append(self._start_worker())
        except Exception as err:  # noqa: BLE001 - re-raised by _wait_started in the caller's thread
            self._start_error = err

    def _wait_started(self) -> None:
        """Join the background start (call with the lock held); raise if it failed."""
        if self._starter is not None:
            self._starter.join()
            self._starter = None
        if self._start_error is not None:
            raise RuntimeError(f"could not start reward workers: {self._start_error}") from self._start_error

    def _start_worker(self) -> _Worker:
        conn, child_conn = self._ctx.Pipe(duplex=True)
        lifeline_r, lifeline_w = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=_worker_main, args=(child_conn, lifeline_r),
                                    name="rlvr-reward-worker", daemon=True)
        process.start()
        child_conn.close()
        lifeline_r.close()
        return _Worker(process, conn, lifeline_w, started_at=time.monotonic())

    @staticmethod
    def _stop_worker(worker: _Worker, *, kill: bool) -> None:
        if kill and worker.process.is_alive():
            worker.process.kill()
        worker.process.join(None if kill else CLOSE_GRACE_S)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
        worker.lifeline.close()
        worker.process.close()

    def _replace(self, i: int, *, kill: bool) -> None:
        self._stop_worker(self._workers[i], kill=kill)
        self._workers[i] = self._start_worker()
        self.restarts += 1

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for tests and monitoring)."""
        with self._lock:
            self._wait_started()
            return [w.process.pid for w in self._workers]

    def close(self) -> None:
        """Stop all workers (ask, wait up to CLOSE_GRACE_S, then kill) and reap them. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._starter is not None:
                self._starter.join()
            for w in self._workers:
                try:
                    w.conn.send(None)
                except OSError:  # already dead: nothing to ask
                    pass
            for w in self._workers:
                self._stop_worker(w, kill=False)
            self._workers = []

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scoring -----------------------------------------------------------------------------

    def score(self, verifiers: Sequence[str], completions: Sequence[str], golds: Sequence[str]) -> list[VerifyResult]:
        """One VerifyResult per item, in input order.   three length-B sequences -> list[B]

        verifiers[i] names the verifier for item i (a VERIFIERS name or "module:function").
        Unknown verifier names raise ValueError before anything runs; a verifier that raises
        makes the call raise RewardPoolError after the batch is done (the pool stays usable).
        """
        if not len(verifiers) == len(completions) == len(golds):
            raise ValueError(f"score: verifiers, completions and golds must have equal lengths, "
                             f"got {len(verifiers)}, {len(completions)}, {len(golds)}")
        keys = list(zip(verifiers, completions, golds))
        for i, key in enumerate(keys):
            if not all(isinstance(x, str) for x in key):
                raise ValueError(f"score: item {i} must be three strings (verifier, completion, gold), "
                                 f"got {tuple(type(x).__name__ for x in key)}")
        # Fail fast on a typo, in the caller's process; workers get names they can resolve (portable_name).
        wire = {name: portable_name(name) for name in dict.fromkeys(verifiers)}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardPool.score called after close()")
            self._wait_started()
            if self.num_workers == 0:
                results, errors = self._run_here(unique)
            else:
                results, errors = self._run_workers([(wire[n], c, g) for n, c, g in unique])
        if errors:
            i, text = errors[0]
            name, completion, gold = unique[i]
            raise RewardPoolError(f"verifier {name!r} raised on item (completion={completion[:60]!r}, "
                                  f"gold={gold!r}): {text}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
        by_key = dict(zip(unique, results))
        return [by_key[k] for k in keys]

    @staticmethod
    def _run_here(items: list[tuple[str, str, str]]) -> tuple[list[VerifyResult], list[tuple[int, str]]]:
        results, errors = [], []
        for i, (name, completion, gold) in enumerate(items):
            try:
                results.append(_checked_call(get_verifier(name), name, completion, gold))
            except Exception as err:  # noqa: BLE001 - same contract as the workers: raise after the batch
                errors.append((i, f"{type(err).__name__}: {err}"))
                results.append(VerifyResult(0.0, None, "verifier error"))
        return results, errors

    def _run_workers(self, items: list[tuple[str, str, str]]) -> tuple[list[VerifyResult], list[tuple[int, str]]]:
        results: list[VerifyResult | None] = [None] * len(items)
        errors: list[tuple[int, str]] = []
        todo = deque(range(len(items)))
        try:
            while todo or any(w.queue for w in self._workers):
                self._hand_out(items, todo)
                self._wait_and_collect(items, todo, results, errors)
        except BaseException:
            # Interrupted (Ctrl-C, a worker that cannot start): a busy worker would later answer an
            # item of this abandoned batch, so replace it before anyone calls score again.
            for i, w in enumerate(self._workers):
                if w.queue:
                    self._replace(i, kill=True)
            raise
        return results, errors  # type: ignore[return-value]

    def _hand_out(self, items: list[tuple[str, str, str]], todo: deque[int]) -> None:
        """Top up every ready worker to PIPELINE_DEPTH items in flight."""
        for w in self._workers:
            while w.ready and todo and len(w.queue) < PIPELINE_DEPTH:
                i = todo[0]
                _, completion, gold = items[i]
                if w.queue and len(completion) + len(gold) > PIPELINE_MAX_CHARS:
                    break  # wait until the worker is idle (and reading) before sending a big item
                try:
                    w.conn.send(items[i])
                except OSError:  # the worker died since we last looked; _wait_and_collect replaces it
                    break
                todo.popleft()
                if not w.queue:
                    w.deadline = time.monotonic() + self.timeout_s
                w.queue.append(i)

    def _wait_and_collect(self, items: list[tuple[str, str, str]], todo: deque[int],
                          results: list[VerifyResult | None], errors: list[tuple[int, str]]) -> None:
        """Block until a message, a death or a deadline; apply what happened to the workers."""
        now = time.monotonic()
        next_deadline = min([w.deadline for w in self._workers if w.queue] +
                            [w.started_at + START_TIMEOUT_S for w in self._workers if not w.ready], default=now)
        handles = [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers]
        ready = set(wait(handles, timeout=max(0.0, next_deadline - now)))
        for i, w in enumerate(list(self._workers)):
            alive = self._drain(w, results, errors) if w.conn in ready or w.process.sentinel in ready else True
            now = time.monotonic()
            if not alive or w.process.sentinel in ready:
                self._on_death(i, items, todo, results)
            elif w.queue and now >= w.deadline:
                self._on_timeout(i, items, todo, results)
            elif not w.ready and now >= w.started_at + START_TIMEOUT_S:
                raise RuntimeError(f"reward worker pid {w.process.pid} did not start within {START_TIMEOUT_S:g} s")

    def _drain(self, w: _Worker, results: list[VerifyResult | None], errors: list[tuple[int, str]]) -> bool:
        """Read every message the worker has sent; False if its pipe is closed (it died)."""
        try:
            while w.conn.poll():
                kind, payload = w.conn.recv()
                if kind == "ready":
                    w.ready = True
                    self._start_failures = 0
                    continue
                i = w.queue.popleft()
                if kind == "ok":
                    results[i] = payload
                else:
                    errors.append((i, payload))
                    results[i] = VerifyResult(0.0, None, "verifier error")
                # The worker starts its next queued item now: that item's clock starts here.
                w.deadline = time.monotonic() + self.timeout_s if w.queue else math.inf
        except (EOFError, OSError):
            return False
        return True

    def _give_back(self, w: _Worker, todo: deque[int]) -> int:
        """Remove the worker's queue: returns the item it was busy with, re-queues the others first."""
        head = w.queue.popleft()
        todo.extendleft(reversed(w.queue))
        w.queue.clear()
        return head

    def _on_death(self, i: int, items: list[tuple[str, str, str]], todo: deque[int],
                  results: list[VerifyResult | None]) -> None:
        w = self._workers[i]
        w.process.join()
        how = _exit_text(w.process)
        if not w.ready:
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                raise RuntimeError(f"reward workers keep dying while starting (last: pid {w.process.pid}, {how}); "
                                   "if the main script creates the pool at import time, guard it with "
                                   "if __name__ == '__main__'")
            logger.warning("reward worker pid %s died while starting (%s); restarted", w.process.pid, how)
        elif w.queue:
            item = self._give_back(w, todo)
            name, completion, _ = items[item]
            logger.warning("reward worker pid %s crashed (%s) in verifier %r on completion %r; scored 0 and restarted",
                           w.process.pid, how, name, completion[:80])
            results[item] = VerifyResult(0.0, None, f"worker crashed: {how}")
        else:
            logger.warning("idle reward worker pid %s died (%s); restarted", w.process.pid, how)
        self._replace(i, kill=True)

    def _on_timeout(self, i: int, items: list[tuple[str, str, str]], todo: deque[int],
                    results: list[VerifyResult | None]) -> None:
        w = self._workers[i]
        item = self._give_back(w, todo)
        name, completion, _ = items[item]
        logger.warning("reward worker pid %s timed out after %g s in verifier %r on completion %r; killed and restarted",
                       w.process.pid, self.timeout_s, name, completion[:80])
        results[item] = VerifyResult(0.0, None, f"timeout after {self.timeout_s:g} s")
        self._replace(i, kill=True)

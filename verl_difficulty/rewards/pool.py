"""The safe entry point of grading: :class:`SafeGrader`, its grader subprocess pool :class:`GraderPool`, and the
task registry :data:`GRADERS` a grader subprocess runs.

:class:`SafeGrader` (what the reward managers and functions call)

* scores ``bytes`` that are not UTF-8, strings with lone surrogates, ``None`` and empty/blank responses 0 with a
  reason, without grading them;
* computes the format rule on the full response (linear-time string scans, cannot hang), then truncates the response
  to its last ``max_chars`` characters (default 8000, the answer is at the end) before grading accuracy;
* runs the accuracy grader in a small pool of **persistent grader subprocesses** (:class:`GraderPool`) with a hard
  per-call time limit: on timeout the subprocess is killed (SIGKILL) and replaced, the call scores 0 with a reason.
  This works from any thread and from asyncio code, unlike math-verify's own ``parsing_timeout`` /
  ``timeout_seconds``, which use ``signal.alarm`` (main thread only) and cannot interrupt long C calls anyway:
  ``\\boxed{10^{10^{10}}}`` (20 characters) makes sympy compute a 10-billion-digit integer and ignores SIGALRM;
  ``\\boxed{2^{2^{40}}}`` allocates gigabytes (the subprocess also has an address-space limit, ``max_memory_mb``);
* turns any exception (in the grader, the pool, the transport) into ``acc=0`` with a reason.

Why subprocesses started with ``subprocess.Popen`` (fork+exec of a fresh interpreter) instead of ``multiprocessing``:
``fork`` is unsafe in reward workers (threads, torch); ``spawn`` / ``forkserver`` re-import the parent's ``__main__``
(a Ray worker's or pytest's) and the packages of the worker function. The child here runs a tiny bootstrap
(:data:`_BOOTSTRAP`) that puts stand-ins for the parent packages of this module into ``sys.modules`` (so no package
``__init__`` runs) and imports this module, which loads only the grading modules (:mod:`.results`, :mod:`.extract`,
:mod:`.math_grading`, :mod:`.perception`, and :mod:`verl_difficulty.schema`) and their libraries (``math_verify``,
``mathruler``, ``sympy``, ``rapidfuzz``; ~1 s), never verl or torch. It talks to the parent over a socketpair with
:class:`multiprocessing.connection.Connection` (pickle of plain strings/numbers/dicts from the trusted parent).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

from verl_difficulty.rewards.extract import check_format, coerce_text, truncate_tail
from verl_difficulty.rewards.math_grading import grade_math, grade_r1v
from verl_difficulty.rewards.math_grading import warm_up as warm_up_math
from verl_difficulty.rewards.perception import grade_bbox, grade_count, grade_ocr
from verl_difficulty.rewards.perception import warm_up as warm_up_perception
from verl_difficulty.rewards.results import GradeResult, default_extras, fail, short

logger = logging.getLogger(__name__)

DEFAULT_MAX_CHARS = 8000
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_NUM_PROCS = 2
DEFAULT_MAX_MEMORY_MB = 4096
GRADER_MODES = ("subprocess", "inline")


# ====================================================================================================================
# Dispatch (what a grader subprocess runs)
# ====================================================================================================================
def _debug_sleep(response: str, ground_truth: Any, *, seconds: float = 3600.0, **_) -> GradeResult:
    """Test hook: a grader that hangs (sleeps) for ``seconds``."""
    time.sleep(float(seconds))
    return GradeResult(acc=1.0)


def _debug_raise(response: str, ground_truth: Any, **_) -> GradeResult:
    """Test hook: a grader that raises."""
    raise RuntimeError("grader hook raised on purpose")


def _debug_modules(response: str, ground_truth: Any, **_) -> GradeResult:
    """Test hook: the modules of this project, verl, torch and rapidfuzz loaded in the grading process (extra
    ``modules``)."""
    mods = sorted(m for m in sys.modules if m.split(".")[0] in ("verl_difficulty", "verl", "torch", "rapidfuzz"))
    return GradeResult(acc=1.0, extras={"modules": mods})


GRADERS: dict[str, Callable[..., GradeResult]] = {
    "math": grade_math,
    "r1v": grade_r1v,
    "bbox": grade_bbox,
    "ocr": grade_ocr,
    "count": grade_count,
    "_debug_sleep": _debug_sleep,
    "_debug_raise": _debug_raise,
    "_debug_modules": _debug_modules,
}
"""Task name -> grader. Only these names can be run in a grader subprocess."""


def grade_task(task: str, response: str, ground_truth: Any, **opts) -> GradeResult:
    """Run grader ``task`` in this process (no time limit); any exception becomes ``acc=0`` with a reason."""
    try:
        fn = GRADERS[task]
    except KeyError:
        return fail(f"unknown grading task {task!r}")
    try:
        return fn(response, ground_truth, **opts)
    except MemoryError:
        return fail("grader error: MemoryError")
    except RecursionError:
        return fail("grader error: RecursionError")
    except Exception as e:  # noqa: BLE001 - grading must never propagate
        return fail(f"grader error: {type(e).__name__}: {short(str(e))}")


def _plain(x: Any) -> Any:
    """numpy scalars/arrays and mappings -> plain Python (picklable without numpy in the child, stable types)."""
    if x is None or isinstance(x, (str, bytes, bool, int, float)):
        return x
    if hasattr(x, "tolist"):
        return _plain(x.tolist())
    if hasattr(x, "item") and callable(x.item):
        try:
            return x.item()
        except Exception:
            pass
    if isinstance(x, dict) or hasattr(x, "items"):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return str(x)


# ====================================================================================================================
# Grader subprocess pool
# ====================================================================================================================
class GradeTimeout(Exception):
    """A grading call ran past its time limit (its grader process was killed)."""


class GraderProcessError(Exception):
    """A grader process died, failed to start, or broke the protocol."""


_BOOTSTRAP = r"""
import importlib, os, sys, types
root, module, fd, mem = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if sys.path and sys.path[0] in ("", os.getcwd()):  # "-c" put the working directory first: no file there may
    del sys.path[0]                                  # shadow a module the graders import
parts = module.split(".")
for i in range(1, len(parts)):  # stand-ins for the parent packages: no package __init__ runs in a grader process
    pkg = types.ModuleType(".".join(parts[:i]))
    pkg.__path__ = [os.path.join(root, *parts[:i])]
    sys.modules[pkg.__name__] = pkg
    if i > 1:
        setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], pkg)
importlib.import_module(module)._child_main(fd, mem)
"""
"""Program of a grader subprocess: ``python -c _BOOTSTRAP ROOT MODULE FD MAX_MEMORY_MB`` (MODULE: this module)."""

_MODULE = __name__
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[_MODULE.count(".")])
"""The folder holding the top-level package of this module (this module's path minus its dotted name)."""


def _child_main(fd: int, max_memory_mb: int) -> None:
    """Entry point of a grader subprocess: serve ``(task, response, ground_truth, opts)`` requests until EOF."""
    import signal
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a grader dies
    logging.basicConfig(level=logging.ERROR)
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    conn = Connection(fd)
    try:
        warm_up_math()
        warm_up_perception()
        if max_memory_mb and max_memory_mb > 0:
            import resource

            lim = int(max_memory_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        conn.send(("ready", os.getpid()))
    except Exception as e:  # noqa: BLE001
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            return
        try:
            task, response, ground_truth, opts = req
            if task == "_ping":
                out = {"ok": True, "result": None}
            else:
                out = {"ok": True, "result": asdict(grade_task(task, response, ground_truth, **(opts or {})))}
        except BaseException as e:  # noqa: BLE001
            out = {"ok": False, "error": f"{type(e).__name__}: {short(str(e))}"}
        try:
            conn.send(out)
        except (EOFError, OSError):
            return



class _Worker:
    def __init__(self, max_memory_mb: int, start_timeout_s: float):
        self.max_memory_mb = max_memory_mb
        self.start_timeout_s = start_timeout_s
        self.proc: Optional[subprocess.Popen] = None
        self.conn = None
        self.ready = False

    def start(self) -> None:
        from multiprocessing.connection import Connection

        parent_sock, child_sock = socket.socketpair()
        try:
            env = dict(os.environ)
            env.setdefault("OMP_NUM_THREADS", "1")
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, _PACKAGE_ROOT, _MODULE, str(child_sock.fileno()),
                 str(self.max_memory_mb)],
                pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
                close_fds=True,
            )
        finally:
            child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.ready = False

    def ensure_ready(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.kill()
            self.start()
        if self.ready:
            return
        if not self.conn.poll(self.start_timeout_s):
            self.kill()
            raise GraderProcessError(f"grader process did not start within {self.start_timeout_s}s")
        try:
            msg = self.conn.recv()
        except (EOFError, OSError) as e:
            self.kill()
            raise GraderProcessError(f"grader process exited while starting ({e!r})") from e
        if not (isinstance(msg, tuple) and msg and msg[0] == "ready"):
            self.kill()
            raise GraderProcessError(f"grader process failed to start: {msg!r}")
        self.ready = True

    def request(self, payload: tuple, timeout_s: float) -> dict:
        self.ensure_ready()
        try:
            self.conn.send(payload)
            if not self.conn.poll(timeout_s):
                self.kill()
                raise GradeTimeout(f"timeout: grading took more than {timeout_s:g}s (grader process killed)")
            return self.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as e:
            code = self.proc.poll() if self.proc is not None else None
            self.kill()
            raise GraderProcessError(f"grader process died (exit code {code})") from e

    def kill(self) -> None:
        proc, conn = self.proc, self.conn
        self.proc, self.conn, self.ready = None, None, False
        if proc is not None and proc.poll() is None:
            try:
                proc.kill()
            except OSError:
                pass
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except Exception:  # noqa: BLE001
                pass
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None


class GraderPool:
    """A fixed number of persistent grader subprocesses with a hard per-call time limit. Thread-safe.

    ``call`` takes an idle process (waiting for one does not count toward the limit), sends the request, and waits at
    most ``timeout_s`` for the answer; on timeout the process is SIGKILLed and a replacement is started at once
    (it imports in the background; the next call that gets it waits for its readiness handshake, which does not count
    toward that call's limit either). A process that dies (crash, memory limit) is replaced the same way.
    Grader processes exit when the parent closes the pool or dies (EOF on their socket).
    """

    def __init__(self, num_procs: int = DEFAULT_NUM_PROCS, timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_memory_mb: int = DEFAULT_MAX_MEMORY_MB, start_timeout_s: float = 120.0):
        self.num_procs = max(1, int(num_procs))
        self.timeout_s = float(timeout_s)
        self.max_memory_mb = int(max_memory_mb)
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers = [_Worker(self.max_memory_mb, start_timeout_s) for _ in range(self.num_procs)]
        for w in self._workers:
            w.start()
            self._idle.put(w)
        self._lock = threading.Lock()
        self.stats = {"calls": 0, "timeouts": 0, "restarts": 0, "errors": 0}
        self._closed = False
        _LIVE_POOLS.add(self)

    def call(self, task: str, response: str, ground_truth: Any, opts: Optional[dict] = None,
             timeout_s: Optional[float] = None) -> GradeResult:
        """Run grader ``task`` in a subprocess. Raises :class:`GradeTimeout` or :class:`GraderProcessError`."""
        if self._closed:
            raise GraderProcessError("grader pool is closed")
        limit = self.timeout_s if timeout_s is None else float(timeout_s)
        w = self._idle.get()
        try:
            with self._lock:
                self.stats["calls"] += 1
            try:
                out = w.request((task, response, ground_truth, opts or {}), limit)
            except (GradeTimeout, GraderProcessError) as e:
                with self._lock:
                    self.stats["timeouts" if isinstance(e, GradeTimeout) else "errors"] += 1
                self._restart(w)
                raise
            if not out.get("ok"):
                return fail(f"grader error: {out.get('error', 'unknown')}")
            if out.get("result") is None:
                return GradeResult()
            return GradeResult.from_dict(out["result"])
        finally:
            self._idle.put(w)

    def ping(self, timeout_s: float = 60.0) -> None:
        """Make sure every process started (raises :class:`GraderProcessError` otherwise)."""
        for _ in range(self.num_procs):
            w = self._idle.get()
            try:
                w.request(("_ping", "", None, {}), timeout_s)
            finally:
                self._idle.put(w)

    def _restart(self, w: _Worker) -> None:
        with self._lock:
            self.stats["restarts"] += 1
        try:
            w.kill()
            if not self._closed:
                w.start()
        except Exception as e:  # noqa: BLE001 - ensure_ready retries at the next call
            logger.warning("could not restart a grader process: %r", e)

    def pids(self) -> list[Optional[int]]:
        return [w.pid for w in self._workers]

    def close(self) -> None:
        self._closed = True
        for w in self._workers:
            w.kill()
        _LIVE_POOLS.discard(self)

    def __del__(self):  # pragma: no cover
        try:
            self.close()
        except Exception:
            pass


_LIVE_POOLS: "set[GraderPool]" = set()


@atexit.register
def _close_all_pools() -> None:  # pragma: no cover
    for p in list(_LIVE_POOLS):
        try:
            p.close()
        except Exception:
            pass


# ====================================================================================================================
# The safe entry point
# ====================================================================================================================
class SafeGrader:
    """Validate, format-check, truncate, then grade in a subprocess with a time limit. Never raises.

    ``mode="subprocess"`` (default): a :class:`GraderPool` of ``num_procs`` processes, hard ``timeout_s`` per call.
    ``mode="inline"``: grade in the calling thread with NO time limit (for debugging, or where subprocesses are not
    allowed); hostile LaTeX can then hang the caller.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, max_chars: int = DEFAULT_MAX_CHARS,
                 num_procs: int = DEFAULT_NUM_PROCS, max_memory_mb: int = DEFAULT_MAX_MEMORY_MB,
                 mode: str = "subprocess"):
        if mode not in GRADER_MODES:
            raise ValueError(f"mode must be one of {GRADER_MODES}, got {mode!r}")
        self.timeout_s = float(timeout_s)
        self.max_chars = int(max_chars)
        self.mode = mode
        self.pool = GraderPool(num_procs, timeout_s, max_memory_mb) if mode == "subprocess" else None

    def grade(self, task: str, response: Any, ground_truth: Any, opts: Optional[dict] = None,
              format_style: Optional[str] = None, format_opts: Optional[dict] = None) -> GradeResult:
        """Grade ``response`` with grader ``task`` (a key of :data:`GRADERS`); ``format_style`` as in
        :func:`check_format` (computed on the full response)."""
        try:
            text, why = coerce_text(response)
            if text is None:
                return fail(why, **default_extras(task))
            fmt = 0.0
            if format_style:
                try:
                    fmt, _ = check_format(format_style, text, **(format_opts or {}))
                except Exception as e:  # noqa: BLE001
                    logger.warning("format check failed: %r", e)
                    fmt = 0.0
            text = truncate_tail(text, self.max_chars)
            gt = _plain(ground_truth)
            if self.pool is None:
                res = grade_task(task, text, gt, **(opts or {}))
            else:
                try:
                    res = self.pool.call(task, text, gt, opts or {})
                except (GradeTimeout, GraderProcessError) as e:
                    res = fail(str(e))
            res.format = float(fmt)
            for k, v in default_extras(task).items():
                res.extras.setdefault(k, v)
            return res
        except Exception as e:  # noqa: BLE001 - never propagate
            return fail(f"grading failed: {type(e).__name__}: {short(str(e))}", **default_extras(task))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


_SHARED: dict[tuple, SafeGrader] = {}
_SHARED_LOCK = threading.Lock()


def shared_grader(timeout_s: float = DEFAULT_TIMEOUT_S, max_chars: int = DEFAULT_MAX_CHARS,
                  num_procs: int = DEFAULT_NUM_PROCS, max_memory_mb: int = DEFAULT_MAX_MEMORY_MB,
                  mode: str = "subprocess") -> SafeGrader:
    """One :class:`SafeGrader` per distinct setting in this process (reward managers and functions share it). Keyed by
    the process id too: a forked child never talks to its parent's grader processes."""
    key = (os.getpid(), float(timeout_s), int(max_chars), int(num_procs), int(max_memory_mb), mode)
    with _SHARED_LOCK:
        g = _SHARED.get(key)
        if g is None:
            g = SafeGrader(timeout_s, max_chars, num_procs, max_memory_mb, mode)
            _SHARED[key] = g
        return g


__all__ = [
    "DEFAULT_MAX_CHARS", "DEFAULT_TIMEOUT_S", "DEFAULT_NUM_PROCS", "DEFAULT_MAX_MEMORY_MB", "GRADER_MODES", "GRADERS",
    "grade_task", "GradeTimeout", "GraderProcessError", "GraderPool", "SafeGrader", "shared_grader",
]

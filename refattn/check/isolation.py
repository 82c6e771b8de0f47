r"""Running the callable under test in a worker process that fails closed.

``refattn check`` imports and executes a user's code. [`Worker`][refattn.check.isolation.Worker] keeps it out of the
checker's process: one worker per check run loads the TARGET (a file TARGET's folder is on its
``sys.path``, so sibling modules import) and answers calls over a pipe; the checker only sees
arrays and messages. Whatever the callable does becomes a [`CallProblem`][refattn.check.loader.CallProblem],
and so a failing verdict, never a hang, a crash or a pass by default:

| the callable | the verdict says |
|---|---|
| raises (any `BaseException`: `SystemExit`, `KeyboardInterrupt`, ...) | `raised TYPE: message` (a message whose `__str__` raises is reported as unprintable) |
| returns after `timeout` seconds | `timeout`: the worker is stopped and restarted |
| ends the process (`os._exit`), crashes (a segfault), is killed (out of memory) | `crashed`: the exit code or the signal (`SIGSEGV`, `SIGKILL`), the worker restarted |
| allocates beyond `memory_limit` bytes | `raised MemoryError` (the worker's address space is capped with `RLIMIT_AS`) |
| writes into its inputs | `mutated`: the argument it changed |
| prints | nothing: stdout and stderr (Python's and the C library's) are captured and kept in `Worker.output`, never mixed into `--json` |

Every call gets fresh copies of its inputs (pickled by the checker across the pipe), and the worker
compares them after the call with the copies it kept. Nothing comes back pickled: a reply is
numeric arrays and bounded text ([`refattn.check.wire`][refattn.check.wire]), which the checker validates, so a
callable that reaches the pipe can send only numbers, and the verdict is computed from them in the
checker. The worker runs in its own session; stopping it kills its process group, so nothing it
started outlives the check. The worker is forked from a fresh server
process (``forkserver``; ``spawn`` where there is none), so it inherits nothing from the checker
(no threads, no CUDA context); a callable handed in from Python is pickled into it, or, when it
cannot be pickled (a lambda, a closure), inherited by ``fork`` where the platform has it. A fork of
a process whose framework threads hold a lock can deadlock (JAX's and torch's thread pools): hand
such code in as a module-level function, a ``functools.partial`` of one, a TARGET string, or through
[`refattn.check.adapters`][refattn.check.adapters], whose adapters pickle; a worker that does not start within
`START_TIMEOUT` is a failing load, never a hang.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import pickle
import signal
import sys
import tempfile
import types
import warnings
from pathlib import Path

import numpy as np

from refattn.check import reaper
from refattn.check.loader import CallProblem, LoadFailure, TargetError, as_result_array, load_target, safe_str
from refattn.check.wire import WireError, decode_control, decode_reply, encode_control, encode_reply

__all__ = ["Worker", "WorkerError", "default_memory_limit"]

#: Seconds a worker may take to start and load the TARGET (imports can be slow: torch, jax).
START_TIMEOUT = 300.0
#: Characters of captured output kept per run.
OUTPUT_LIMIT = 4000
#: Bytes a reply of the worker may carry (its arrays); a larger one fails the call.
MAX_REPLY_BYTES = 1 << 31


class WorkerError(Exception):
    """The worker could not be started (a usage or environment problem, not the callable's)."""


def default_memory_limit() -> int | None:
    """Half of this machine's physical memory, in bytes (None where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return None


def _describe_exit(code) -> str:
    if code is None:
        return "the worker process stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = {"SIGSEGV": " (a segmentation fault)", "SIGKILL": " (killed: out of memory?)",
                "SIGABRT": " (aborted)", "SIGBUS": " (a bus error)"}.get(name, "")
        return f"the worker process was killed by {name}{hint}"
    return f"the worker process exited with code {code} during the call (os._exit, or a crash in native code)"


# ----------------------------------------------------------------------------- the worker's side
_INHERITED = None  # a callable handed to a forked worker


def _arrays(args, kwargs, names=()):
    """``(name, array)`` for every NumPy array among the arguments (positional ones by ``names``)."""
    named = [(names[i] if i < len(names) else f"argument {i}", a) for i, a in enumerate(args)]
    named += list(kwargs.items())
    return [(name, a) for name, a in named if isinstance(a, np.ndarray)]


def _serve(conn, fn, capture):
    while True:
        try:
            msg = conn.recv()  # the checker's request (pickled by the checker: safe to read here)
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        _, args, kwargs, names, parts = msg
        kept = [(name, a.copy()) for name, a in _arrays(args, kwargs, names)]
        capture.seek(0)
        capture.truncate()
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                out = fn(*args, **kwargs)
            result, message = as_result_array(out, parts)
            error_type = ""
        except BaseException as exc:  # noqa: BLE001 - the user's bug must become a verdict
            result, error_type, message = None, type(exc).__name__, safe_str(exc)
        changed = [name for (name, a), (_, b) in zip(_arrays(args, kwargs, names), kept)
                   if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True)]
        sys.stdout.flush()
        sys.stderr.flush()
        capture.seek(0)
        printed = capture.read(4 * OUTPUT_LIMIT).decode("utf-8", "replace")  # bounded, whatever was printed
        capture.seek(0)
        capture.truncate()
        if error_type:
            status, arrays = "raised", ()
        elif result is None:
            status, arrays = "not an array", ()
        else:
            status, arrays = "ok", result if isinstance(result, tuple) else (result,)
        try:
            reply = encode_reply(status, arrays, is_tuple=isinstance(result, tuple), error_type=error_type,
                                 message=message or "", changed=changed, printed=printed)
        except (WireError, ValueError, MemoryError) as exc:
            reply = encode_reply("not an array", message=f"returned a result that is not plain numbers ({exc})",
                                 changed=changed, printed=printed)
        try:
            conn.send_bytes(reply)
        except (OSError, ValueError):
            return


def _worker_main(conn, payload, memory_limit):
    """Entry point of the worker process."""
    capture = tempfile.TemporaryFile()
    try:
        os.setsid()  # its own session and process group: the checker ends it and everything it started
    except OSError:
        pass
    try:
        if memory_limit:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (int(memory_limit), int(memory_limit)))
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(capture.fileno(), 1)  # the C library's output too
        os.dup2(capture.fileno(), 2)
        kind = payload[0]
        if kind == "target":
            _, target, path, cwd = payload
            sys.path[:0] = [p for p in path if p not in sys.path]
            if cwd:
                os.chdir(cwd)
            fn = load_target(target)
        elif kind == "pickled":
            fn = pickle.loads(payload[1])
        else:
            fn = _INHERITED
        conn.send_bytes(encode_control("ready", keywords=_keywords(fn)))
    except BaseException as exc:  # noqa: BLE001 - loading user code may raise anything
        what = "load" if isinstance(exc, (LoadFailure, TargetError)) else "load-raised"
        conn.send_bytes(encode_control(what, message=f"{type(exc).__name__}: {safe_str(exc)}"
                                       if what == "load-raised" else safe_str(exc)))
        return
    _serve(conn, fn, capture)


def _keywords(fn):
    """The keyword arguments ``fn`` takes explicitly (``**kwargs`` does not count)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


# ----------------------------------------------------------------------------- the checker's side
def _importable(module) -> bool:
    """Whether a fresh process can import ``module`` by name (functions pickle by reference)."""
    if not module or module == "__main__":
        return False
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class _NoMainPickler(pickle.Pickler):
    """A pickler that refuses anything defined in ``__main__``: a fresh worker would have to import the
    user's script to unpickle it, running the script's top level (its ``check()`` calls included) again."""

    def persistent_id(self, obj):
        if type(obj).__module__ == "__main__" or (isinstance(obj, (types.FunctionType, type))
                                                 and obj.__module__ == "__main__"):
            raise pickle.PicklingError("refers to an object defined in __main__")
        return None


def _dumps_without_main(obj) -> bytes:
    buf = io.BytesIO()
    _NoMainPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def _fresh_context():
    """Workers that share nothing with the checker's process: forked from a fresh server process that
    has imported this module once (so a restart after a crash takes milliseconds, not an import of
    NumPy and refattn), or spawned where there is no fork server."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return mp.get_context("spawn")



class Worker:
    """One worker process for one check run: ``call(args, kwargs)`` returns ``(result, None)`` or
    ``(None, CallProblem)``; `close` stops it. ``keywords`` lists what the callable takes.

    Raises [`LoadFailure`][refattn.check.loader.LoadFailure] when the TARGET cannot be loaded (a failing
    verdict), [`TargetError`][refattn.check.loader.TargetError] for a malformed TARGET (a usage error)."""

    def __init__(self, target, *, timeout=60.0, memory_limit=None):
        self.timeout = float(timeout)
        self.memory_limit = memory_limit
        self.output = ""
        self.restarts = 0
        self._proc = None
        self._known: set[int] = set()
        self._conn = None
        self._payload, self._ctx = self._plan(target)
        self.keywords = self._start()

    @staticmethod
    def _plan(target):
        global _INHERITED
        if isinstance(target, str):
            mod, _, _ = target.rpartition(":")
            path = list(sys.path)
            if mod.endswith(".py"):
                path.insert(0, str(Path(mod).resolve().parent))  # sibling modules import
                target = f"{Path(mod).resolve()}:{target.rpartition(':')[2]}"
            return ("target", target, path, os.getcwd()), _fresh_context()
        try:
            if not _importable(getattr(target, "__module__", None)):
                raise pickle.PicklingError("defined in __main__ or a module a new process cannot import")
            return ("pickled", _dumps_without_main(target)), _fresh_context()
        except Exception:  # noqa: BLE001 - lambdas, closures, __main__: inherit by fork where there is one
            if "fork" not in mp.get_all_start_methods():
                raise WorkerError("fn: cannot be pickled into a worker process on this platform; pass a "
                                  "module-level function or a TARGET string, or check it with isolate=False") from None
            if "jaxlib" in sys.modules:  # JAX is multithreaded: a fork of this process would deadlock
                raise WorkerError("fn: cannot be pickled (a lambda or a closure), and this process runs JAX, whose "
                                  "threads make a fork deadlock; pass a module-level function, a functools.partial "
                                  "of one, a TARGET string or a refattn.check.adapters adapter, or check it with "
                                  "isolate=False") from None
            _INHERITED = target
            return ("inherited",), mp.get_context("fork")

    def _start(self):
        reaper.become_subreaper()  # orphans of what the worker starts come to this process, to be ended
        self._known = reaper.children()
        parent, child = self._ctx.Pipe()
        with warnings.catch_warnings():  # fork in a threaded process: Python warns, the worker is single-use
            warnings.simplefilter("ignore", DeprecationWarning)
            proc = self._ctx.Process(target=_worker_main, args=(child, self._payload, self.memory_limit), daemon=True)
            proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        if not parent.poll(START_TIMEOUT):
            self._kill()
            raise LoadFailure(f"loading the callable took more than {START_TIMEOUT:.0f} s")
        try:
            msg = decode_control(parent.recv_bytes(1 << 20))
        except (EOFError, OSError):
            proc.join(5)
            code = proc.exitcode
            self._kill()
            raise LoadFailure(f"loading the callable ended the process: {_describe_exit(code)}") from None
        except WireError as exc:
            self._kill()
            raise LoadFailure(f"loading the callable: the worker sent a message the checker does not read ({exc})") \
                from None
        if msg["status"] == "ready":
            return list(msg.get("keywords", []))
        self._kill()
        text = msg.get("message", "")
        if msg["status"] == "load" and text.startswith("TARGET"):
            raise TargetError(text)
        raise LoadFailure(text if msg["status"] == "load" else f"loading the callable raised {text}")

    def _kill(self):
        if self._proc is not None:
            if self._proc.pid is not None:
                # the worker's whole session, and what left it (adopted by this process, a subreaper)
                reaper.end(self._proc.pid, self._known)
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def _keep(self, printed):
        if printed and len(self.output) < OUTPUT_LIMIT:
            self.output = (self.output + printed)[:OUTPUT_LIMIT]

    def call(self, args, kwargs=None, *, names=(), name="fn", parts=None):
        """``(array, None)`` or ``(None, CallProblem)`` for ``fn(*args, **kwargs)`` in the worker
        (``names``: the positional arguments' names, for the messages; ``parts``: the result is a
        tuple of that many arrays)."""
        if self._proc is None:
            self.restarts += 1
            self._start()
        try:
            self._conn.send(("call", tuple(args), dict(kwargs or {}), tuple(names), parts))
        except (BrokenPipeError, OSError, EOFError):
            code = self._proc.exitcode if self._proc is not None else None
            self._kill()
            return None, CallProblem("crashed", f"{name}: {_describe_exit(code)}")
        if not self._conn.poll(self.timeout):
            self._kill()
            return None, CallProblem("timeout", f"{name} did not return within {self.timeout:g} s (--timeout); "
                                                "the worker process was stopped")
        try:
            data = self._conn.recv_bytes(MAX_REPLY_BYTES)
        except OSError:  # a message longer than MAX_REPLY_BYTES (or a broken pipe)
            alive = self._proc.is_alive()
            code = self._proc.exitcode
            self._kill()
            if alive:
                return None, CallProblem("not an array", f"{name} sent a reply larger than {MAX_REPLY_BYTES} bytes")
            return None, CallProblem("crashed", f"{name}: {_describe_exit(code)}")
        except EOFError:
            self._proc.join(5)
            code = self._proc.exitcode
            self._kill()
            return None, CallProblem("crashed", f"{name}: {_describe_exit(code)}")
        try:
            msg = decode_reply(data, max_bytes=MAX_REPLY_BYTES)
        except WireError as exc:  # never unpickled, never trusted: the call fails
            self._kill()
            return None, CallProblem("not an array", f"{name}: the worker's reply is not plain numeric arrays ({exc})")
        self._keep(msg["printed"])
        if msg["changed"]:
            return None, CallProblem("mutated", f"{name} wrote into its input ({', '.join(msg['changed'])}): a kernel "
                                                "must not modify q, k, v or the mask it is given")
        if msg["status"] == "raised":
            a, b = msg["error_type"], msg["message"]
            extra = " (the memory limit, --memory-limit)" if a == "MemoryError" else ""
            return None, CallProblem("raised", f"{name} raised {a}" + (f": {b}" if b else "") + extra)
        if msg["status"] != "ok" or msg["arrays"] is None:
            return None, CallProblem("not an array", f"{name} {msg['message']}")
        return msg["arrays"], None

    def close(self):
        """Stop the worker (idempotent)."""
        if self._conn is not None and self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(("stop",))
                self._proc.join(2)
            except (BrokenPipeError, OSError):
                pass
        self._kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

"""What the user sees: stages, progress bars and a short summary per stage on the console, while verl's, Ray's and the
libraries' own output goes to a log file per stage (``DIR/logs/<stage>.log``).

:class:`Console` writes to a private duplicate of the terminal's stdout taken when it is created; :func:`to_log`
then points the process's file descriptors 1 and 2 (and ``sys.stdout`` / ``sys.stderr``) at a log file for the
duration of a stage, so every print, warning, logging handler, tqdm bar of a library, Ray driver log line and child
process inheriting the descriptors lands in the log, not on the console. :class:`StageFailed` carries what the user
is told when a stage fails: the stage, the cause in one line and the log's path.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time
from typing import Iterator, Optional, TextIO


class StageFailed(RuntimeError):
    """A stage failed: ``stage``, a one-line ``cause`` and the ``log`` holding the details."""

    def __init__(self, stage: str, cause: str, log: Optional[str] = None):
        super().__init__(f"stage {stage}: {cause}")
        self.stage, self.cause, self.log = stage, cause, log


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_ERROR_LINE = re.compile(r"\b([A-Z][A-Za-z0-9_]*(Error|Exception|Failed|Interrupt))\b(: .*)?$")


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line, ANSI colours removed, at most ``limit`` characters."""
    text = " ".join(_ANSI.sub("", str(text)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def last_error_line(log_text: str) -> Optional[str]:
    """The most telling error line of a log: the last line naming an exception (``FooError: ...``) that is not a
    traceback frame, with Ray's ``(pid=...)`` prefixes removed; None if there is none."""
    for raw in reversed(log_text.splitlines()):
        line = _ANSI.sub("", raw).strip()
        line = re.sub(r"^\([^)]*\)\s*", "", line)  # Ray's "(TaskRunner pid=123)" prefix
        if not line or line.startswith(("File ", "^", "raise ", "Traceback")):
            continue
        m = _ERROR_LINE.search(line)
        if m and (m.group(3) or line.endswith(m.group(1))):
            return one_line(line[m.start():])
    return None


def tail(path: str, max_bytes: int = 400_000) -> str:
    """The end of a text file (empty if missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _duplicate_stdout() -> TextIO:
    try:
        fd = os.dup(sys.stdout.fileno())
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        return sys.stdout
    return os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")


def fmt_seconds(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


class Console:
    """The demo's console: one header per stage, progress bars, indented summary lines."""

    def __init__(self, stream: Optional[TextIO] = None):
        self.out = stream if stream is not None else _duplicate_stdout()
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def stage(self, index: int, total: int, name: str, title: str) -> None:
        self.print(f"[{index}/{total}] {name:<7}{title}")

    def line(self, text: str) -> None:
        self.print("        " + text)

    def bar(self, total: Optional[float], desc: str, unit: str = "it", initial: float = 0):
        """A tqdm bar on the console (not the log), ``desc`` indented under the stage header."""
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc="        " + desc, unit=unit, file=self.out,
                    dynamic_ncols=True, leave=True, mininterval=0.5 if self.tty else 15.0, smoothing=0.1,
                    bar_format=None if total else "{desc}: {elapsed} {postfix}")

    def failure(self, err: StageFailed, rerun: str) -> None:
        self.print(f"\nverl-difficulty demo: stage '{err.stage}' failed: {err.cause}")
        if err.log:
            self.print(f"  log: {err.log}")
        self.print(f"  {rerun}")


@contextlib.contextmanager
def to_log(path: str) -> Iterator[TextIO]:
    """Send everything written to fds 1/2 and ``sys.stdout``/``sys.stderr`` to ``path`` (appended) in this block;
    yields the log file. Restores both afterwards, also on errors."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")
    log.flush()
    saved: list[tuple[int, int]] = []
    for fd in (1, 2):
        try:
            saved.append((fd, os.dup(fd)))
            os.dup2(log.fileno(), fd)
        except OSError:
            pass
    old_out, old_err = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = log
    try:
        yield log
    finally:
        with contextlib.suppress(Exception):
            log.flush()
        sys.stdout, sys.stderr = old_out, old_err
        for fd, dup in saved:
            os.dup2(dup, fd)
            os.close(dup)
        log.close()

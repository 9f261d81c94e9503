"""Clear errors for bad input.

Every problem with a user's files (missing, unreadable, wrong channel count, labels outside the label map,
image/label grid mismatch, empty datalist, missing checkpoint) is raised as :class:`InputError` with a
message that names the file and the fix. MONAI's config machinery and data loaders wrap exceptions in
several layers of ``RuntimeError``, and a DataLoader worker's exception reaches the main process as text only;
:func:`install_excepthook` makes the command line print only the ``InputError`` message in every such case (set
``BTCV_TRACEBACK=1`` to see the full trace).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Iterable

__all__ = ["InputError", "command", "find_input_error", "install_excepthook"]


class InputError(ValueError):
    """A problem with the user's input files or settings, with a message that says what to do."""

    def __init__(self, problems: str | Iterable[str], hint: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.hint = hint
        super().__init__(self._format())

    def _format(self) -> str:
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} problems found:\n" + "\n".join(f"  - {p}" for p in self.problems)
        if self.hint:
            text += f"\n{self.hint}"
        return text


_QUALIFIED = f"{__name__}.InputError: "


def _from_text(exc: BaseException) -> InputError | None:
    """The :class:`InputError` that an exception carries as text only, rebuilt from that text.

    Two places turn an ``InputError`` into text: PyTorch re-raises a DataLoader worker's exception in the main process
    as a new exception whose message is the worker's formatted traceback, and MONAI's ``SaveImage`` collects the
    tracebacks of its writers into the message of the error it raises. The chain that held the ``InputError`` is gone
    either way; its message is the text after ``InputError:`` up to the next chained traceback.
    """
    text = str(exc)
    if _QUALIFIED not in text:
        return None
    body = text[text.index(_QUALIFIED) + len(_QUALIFIED) :]
    for stop in ("\n\nThe above exception", "\n\nDuring handling of the above"):
        if stop in body:
            body = body[: body.index(stop)]
    return InputError(body.strip())


def find_input_error(exc: BaseException | None) -> InputError | None:
    """Return the first :class:`InputError` in an exception's cause/context chain (or ``None``), including one
    raised inside a DataLoader worker process or by one of MONAI's image writers (see :func:`_from_text`)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        carried = _from_text(exc)
        if carried is not None:
            return carried
        if isinstance(exc, InputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _hook(exc_type, exc, tb, _previous=sys.excepthook):
    err = find_input_error(exc)
    if err is None or os.environ.get("BTCV_TRACEBACK"):
        _previous(exc_type, exc, tb)
        return
    sys.stderr.write(f"\nERROR: {err}\n(set BTCV_TRACEBACK=1 to see the full traceback)\n")


_RECORD_FACTORY = logging.getLogRecordFactory()


def _record_without_input_traceback(*args, **kwargs) -> logging.LogRecord:
    """Log records as usual, but one that carries an input problem says only its message, without the traceback:
    MONAI's ``StatsHandler`` logs every exception with its traceback before the exception reaches the hook."""
    record = _RECORD_FACTORY(*args, **kwargs)
    if os.environ.get("BTCV_TRACEBACK"):
        return record
    exc = record.exc_info[1] if record.exc_info else None
    err = find_input_error(exc) if exc is not None else None
    if err is None and _QUALIFIED in str(record.msg):  # ignite logs a worker's exception as text: its whole traceback
        err = _from_text(Exception(record.getMessage()))
    if err is not None:
        record.exc_info, record.exc_text, record.msg, record.args = None, None, f"input problem: {err}", ()
    return record


def command(main):
    """The one way a tool's ``main(argv)`` reports bad input: an exception that carries an :class:`InputError`
    (through its cause chain, a worker process or MONAI's writers: :func:`find_input_error`) prints ``ERROR:`` and
    its message on stderr and returns exit status 1; anything else raises with its traceback, as does everything
    under ``BTCV_TRACEBACK=1``."""

    @functools.wraps(main)
    def run(argv=None) -> int:
        try:
            return main(argv)
        except Exception as e:  # noqa: BLE001 - only an input problem is reported as one line
            err = find_input_error(e)
            if err is None or os.environ.get("BTCV_TRACEBACK"):
                raise
            print(f"ERROR: {err}", file=sys.stderr)  # a tool draws no progress bar to step past
            return 1

    return run


def install_excepthook() -> bool:
    """Make uncaught exceptions caused by an :class:`InputError` print only its message, and log records about one
    print no traceback either.

    Idempotent; returns True so it can be used inside a bundle config expression list.
    """
    if sys.excepthook is not _hook:
        _hook.__defaults__ = (sys.excepthook,)
        sys.excepthook = _hook
    if logging.getLogRecordFactory() is not _record_without_input_traceback:
        logging.setLogRecordFactory(_record_without_input_traceback)
    return True

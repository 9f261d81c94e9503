"""Clear errors for bad input.

Every problem with a user's files (missing, unreadable, wrong channel count, labels outside the label map,
image/label grid mismatch, empty datalist, missing checkpoint) is raised as :class:`InputError` with a
message that names the file and the fix. MONAI's config machinery and data loaders wrap exceptions in
several layers of ``RuntimeError``; :func:`install_excepthook` makes the command line print only the
``InputError`` message in that case (set ``BTCV_TRACEBACK=1`` to see the full trace).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

__all__ = ["InputError", "find_input_error", "install_excepthook"]


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


def find_input_error(exc: BaseException | None) -> InputError | None:
    """Return the first :class:`InputError` in an exception's cause/context chain (or ``None``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
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


def install_excepthook() -> bool:
    """Make uncaught exceptions caused by an :class:`InputError` print only its message.

    Idempotent; returns True so it can be used inside a bundle config expression list.
    """
    if sys.excepthook is not _hook:
        _hook.__defaults__ = (sys.excepthook,)
        sys.excepthook = _hook
    return True

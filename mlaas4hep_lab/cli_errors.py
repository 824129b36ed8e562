"""How the ``mlaas4hep`` command reports an error: one line on stderr and an exit status.

* the package's own errors (:class:`~mlaas4hep_lab.errors.MLaaSError`: what, where, what to try) and
  operating-system errors (a file that cannot be written, a permission) exit with 2;
* an exception raised in the user's model.py (while training, say) names model.py's line:
  ``model.py line 12: ValueError: ...``, exit 1;
* anything else is an unexpected error: its type and first line, exit 1;
* Ctrl-C exits with 130 (128 + SIGINT), as shells expect.

``--traceback`` (or ``MLAAS4HEP_TRACEBACK=1``) prints the full traceback before the line.
"""

from __future__ import annotations

import os
import sys

from mlaas4hep_lab.errors import MLaaSError

__all__ = ["describe_error", "traceback_requested", "stdout_closed", "EXIT_ERROR", "EXIT_UNEXPECTED",
           "EXIT_INTERRUPTED"]

EXIT_ERROR = 2          # the package's errors, OS errors, usage errors (argparse's own status)
EXIT_UNEXPECTED = 1     # the user's code, or a bug: see --traceback
EXIT_INTERRUPTED = 130

_TRUE = ("1", "true", "yes", "on")


def traceback_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether a full traceback is wanted (``--traceback`` anywhere on the line, or
    ``MLAAS4HEP_TRACEBACK``), and ``argv`` without the flag: accepted after the sub-command too, where
    argparse would refuse a global option."""
    wanted = "--traceback" in argv or os.environ.get("MLAAS4HEP_TRACEBACK", "").strip().lower() in _TRUE
    return wanted, [a for a in argv if a != "--traceback"]


def describe_error(err: BaseException) -> tuple[str, int]:
    """``(message, exit status)`` for ``err``; the message is one line (an expression error adds its caret)."""
    if isinstance(err, MLaaSError):
        return str(err), EXIT_ERROR
    from mlaas4hep_lab.training.model_file import first_line, user_code_location

    if isinstance(err, OSError) and err.strerror:
        names = " -> ".join(str(n) for n in (err.filename, err.filename2) if n is not None)
        return f"{err.strerror}" + (f": {names}" if names else ""), EXIT_ERROR
    if isinstance(err, OSError):
        return f"{type(err).__name__}: {first_line(err)}", EXIT_ERROR
    what = f"{type(err).__name__}: {first_line(err)}" if str(err).strip() else type(err).__name__
    where = user_code_location(err)
    if where is not None:
        return f"{where[0]} line {where[1]}: {what}", EXIT_UNEXPECTED
    if isinstance(err, MemoryError):
        return (f"out of memory ({what}): lower params 'chunk_size' or 'batch_size', or select fewer branches",
                EXIT_UNEXPECTED)
    return f"{what} (unexpected: rerun with --traceback to see where)", EXIT_UNEXPECTED


def stdout_closed() -> bool:
    """True when standard output is a pipe its reader has closed (``mlaas4hep ... | head``); its
    remaining output, and Python's final flush, then go nowhere instead of raising again."""
    try:
        sys.stdout.flush()
        return False
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return True
    except (OSError, ValueError):
        return False

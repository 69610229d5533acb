"""parlab's errors: one base class, so that a caller (the command line) can tell a user's mistake from a bug.

Every error that a wrong file, field, dataset or checkpoint can cause derives
from :class:`ParlabError`; ``parlab`` prints it as one ``error: ...`` line.
The subclasses also derive from the built-in error a caller would expect
(``ValueError``, ``FileNotFoundError`` ...), so ``except ValueError`` keeps working.
"""


class ParlabError(Exception):
    """A problem with what the user gave parlab (a file, a field, a dataset, a checkpoint)."""


class ConfigError(ParlabError, ValueError):
    """A config field with a wrong value, or an unknown field."""


class RunFolderError(ParlabError, FileExistsError):
    """A run folder that cannot be used as asked (it holds a run, or another process trains in it)."""


class MissingFileError(ParlabError, FileNotFoundError):
    """A file the user named (weights, images, a run) is not there."""


class NotOwnedError(ParlabError, PermissionError):
    """A file or folder parlab did not make, in the way of something it would delete or replace."""


class DiskFullError(ParlabError, OSError):
    """A write that ran out of space; the file it would have replaced is intact."""


def error_line(exc: BaseException) -> str:
    """The one line a command prints for a user's mistake: a :class:`ParlabError`'s message, or the file and
    reason of an ``OSError`` the system raised (permissions, a full disk)."""
    if isinstance(exc, OSError) and not isinstance(exc, ParlabError):
        return f"{exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}"
    text = str(exc)
    # torch re-raises an error of a DataLoader worker (an image that does not decode) as the same class holding
    # the worker's traceback; the worker's own message is the last line, after the qualified class name.
    if "\nOriginal Traceback" in text:
        name = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        last = text.rstrip().splitlines()[-1]
        if last.startswith(name):
            return last[len(name):]
    return text

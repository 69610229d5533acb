"""``docs/benchmarks.md``: what the scripts in ``benchmarks/`` measured, appended by the scripts themselves.

Every benchmark script runs its ``main`` inside :func:`recorded`. Given ``--record`` (or ``--record PAGE``)
on its command line, the script's printed output (its figures and ratios) is appended to the page under
the command, the commit, the machine and the date, once the script has finished; without it nothing is
written. The page is the benchmarks' history, machine by machine: nothing on it is typed by hand.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from parlab.files import write_atomic
from parlab.parameters import repository
from parlab.provenance import provenance_rows

PAGE = repository() / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Appended by the scripts in `benchmarks/` when run with `--record`
(`python benchmarks/metrics_speed.py --record`), oldest first: each entry is the command, the code and the
machine that measured it, and what the script printed. Figures of different machines, or of one machine on
different days, are no comparison; the ratios each script prints were measured within one run.
"""


def split_record_option(argv: list[str]) -> tuple[list[str], Path | None]:
    """``argv`` without ``--record [PAGE]`` / ``--record=PAGE``, and the page it names (:data:`PAGE` when
    it names none; None when the option is absent)."""
    rest, page = [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--record":
            page = PAGE
            if i + 1 < len(argv) and argv[i + 1].endswith(".md"):
                page = Path(argv[i + 1])
                i += 1
        elif arg.startswith("--record="):
            page = Path(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    return rest, page


class _Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy."""

    def __init__(self, terminal):
        self.terminal, self.copy = terminal, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.terminal.write(text)

    def flush(self) -> None:
        self.terminal.flush()


def entry(script: str, argv: list[str], output: str, repo: Path) -> str:
    """One page entry: the command, its provenance and its output."""
    command = shlex.join(["python", f"benchmarks/{Path(script).name}", *argv])
    device = "cuda" if any(a.startswith("cuda") for a in argv) else "cpu"
    rows = [("command", f"`{command}`"), *provenance_rows(repo, device)]
    lines = [f"## {Path(script).name}, {dict(rows)['date']}", "", "| | |", "|---|---|",
             *(f"| {key} | {value} |" for key, value in rows), "", "```text", output.rstrip("\n"), "```", ""]
    return "\n".join(lines)


def append_entry(page: Path, text: str) -> Path:
    """Append ``text`` to ``page`` (created with :data:`HEADER`), atomically."""
    old = page.read_text(encoding="utf-8") if page.is_file() else HEADER
    return write_atomic(page, lambda tmp: Path(tmp).write_text(old.rstrip("\n") + "\n\n" + text, encoding="utf-8"))


@contextlib.contextmanager
def recorded(script: str) -> Iterator[None]:
    """Run a benchmark's body; with ``--record`` in ``sys.argv`` (removed before the script parses it), append
    what it printed to the page once it has finished."""
    sys.argv[1:], page = split_record_option(sys.argv[1:])
    if page is None:
        yield
        return
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        yield
    append_entry(page, entry(script, sys.argv[1:], tee.copy.getvalue(), repository()))
    print(f"recorded in {page}")

"""What the operator sees of a fleet: one live line per target (phase, elapsed) while it
runs, then a summary table, and the exit status that stands for them all.

On a terminal the block of lines is redrawn in place; elsewhere (CI logs, pipes) a line is
printed when a target's phase changes, so a log reads as a timeline."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from qpatch.fleet.runner import DONE, NOT_STARTED, RUNNING, Outcome

#: Exit statuses from least to most serious: the fleet's is its worst target's. A target
#: left unrestored (4) outranks a bug (70), which outranks an interruption, a failure
#: that was restored (1), bad input (2) and a failed check (3).
SEVERITY = (0, 3, 2, 1, 130, 70, 4)


def worst(codes: Sequence[int | None]) -> int:
    def rank(code: int) -> int:
        return SEVERITY.index(code) if code in SEVERITY else SEVERITY.index(70)

    known = [c for c in codes if c is not None]
    return max(known, key=rank) if known else 0


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def progress_line(o: Outcome, name_width: int) -> str:
    elapsed = f"{o.elapsed:6.1f} s" if o.elapsed is not None else " " * 8
    marks = {DONE: "✓" if o.exit_code == 0 else "✗", RUNNING: "…", NOT_STARTED: "-"}
    mark = marks.get(o.state, " ")
    return f"{mark} {o.member.ref:<{name_width}} {elapsed}  {_clip(o.phase, 70)}"


class LiveView:
    """Progress for people, on stderr (stdout may carry the --json object)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._drawn = 0
        self._seen: dict[int, tuple[str, str]] = {}

    def _width(self, outcomes: Sequence[Outcome]) -> int:
        return min(40, max((len(o.member.ref) for o in outcomes), default=8))

    def update(self, outcomes: Sequence[Outcome]) -> None:
        width = self._width(outcomes)
        if self.tty:
            if self._drawn:
                self.stream.write(f"\x1b[{self._drawn}F")  # back to the block's first line
            for o in outcomes:
                self.stream.write("\x1b[2K" + progress_line(o, width) + "\n")
            self._drawn = len(outcomes)
        else:
            for i, o in enumerate(outcomes):
                now = (o.state, o.phase)
                if o.state != "waiting" and self._seen.get(i) != now:
                    self._seen[i] = now
                    self.stream.write(progress_line(o, width) + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        self.stream.write(f"! {message}\n")
        self.stream.flush()
        self._drawn = 0  # the note broke the block: draw it afresh below

    def close(self, outcomes: Sequence[Outcome]) -> None:
        self.update(outcomes)


# ---------------------------------------------------------------------- summary


def _files(result: dict[str, Any]) -> str:
    files = result.get("files")
    if not isinstance(files, list):
        return ""
    return str(len(files))


def _vram(result: dict[str, Any]) -> str:
    comparison = result.get("comparison")
    if not isinstance(comparison, dict):
        return ""
    if not comparison.get("measured"):
        return "not measured"
    pct = comparison.get("saving_pct")
    return comparison.get("verdict") or (f"{pct:+.0f}%" if isinstance(pct, int | float) else "")


def summary_rows(outcomes: Sequence[Outcome]) -> list[list[str]]:
    rows = []
    for o in outcomes:
        r = o.result or {}
        shown = r.get("status") or o.phase
        result = f"not started: {o.reason}" if o.state == NOT_STARTED else shown
        restart = r.get("restart_s")
        rows.append(
            [
                o.member.ref,
                o.member.engine,
                str(result),
                "" if o.exit_code is None else str(o.exit_code),
                _files(r),
                f"{restart:.1f} s" if isinstance(restart, int | float) else "",
                _vram(r),
                f"{o.elapsed:.1f} s" if o.elapsed is not None else "",
            ]
        )
    return rows


HEADER = ["target", "engine", "result", "exit", "files", "restart", "VRAM", "time"]


def table(rows: Sequence[Sequence[str]], header: Sequence[str] = HEADER) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def failure_details(outcomes: Sequence[Outcome], lines: int = 6) -> list[str]:
    """The last lines each failed target's child said: why, without opening a log. The
    error (its message, then its hint) is said once, not again from the log's tail."""
    out = []
    for o in outcomes:
        if not o.failed:
            continue
        said = str((o.result or {}).get("error") or "").splitlines()
        head = said[0] if said else ""
        out.append(f"{o.member.ref} ({o.member.engine}), exit {o.exit_code}: {head}".rstrip())
        out += [f"    {line.strip()}" for line in said[1:]]
        known = {f"qpatch: {head}", *(line.strip() for line in said[1:])}
        tail = [line for line in o.log if line.strip() and line.strip() not in known]
        out += [f"    {line}" for line in tail[-lines:]]
    return out

"""Append-only JSON-lines journal of evaluated candidates; state is rebuilt by replaying it.

The first line is a header with a fingerprint of everything that determines the search (space,
strategy, seed, constraints, budget, teacher, data). Each further line is one finished trial,
written with flush + fsync, so a kill loses at most the candidate in progress. A torn last line
(killed mid-write) is ignored on replay. Every line carries a checksum of its content (``sum``):
a line edited or damaged after it was written stops ``--resume`` with its line number, so a
tampered result is never replayed as if it had been measured.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import ResumeError
from .trial import Trial

VERSION = 2


def _checksum(rec: dict[str, Any]) -> str:
    body = {k: v for k, v in rec.items() if k != "sum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=_json_default).encode()).hexdigest()[:16]


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Journal:
    """Journal at ``path``. Use ``open(header)`` then ``append(trial)``; ``trials`` replays."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh = None
        self.rounds: list[list[int]] = []
        self.notes: list[dict[str, Any]] = []  # every ``note`` record, in order, as read back

    def last(self, kind: str) -> dict[str, Any] | None:
        """The last ``note`` record of ``kind``, or None."""
        return next((r for r in reversed(self.notes) if r.get("type") == kind), None)

    @property
    def finished(self) -> dict[str, Any] | None:
        """The "final" record of a finished run (the last: a run resumed after its final training may
        have trained again)."""
        return self.last("final")

    def exists(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    def read(self) -> tuple[dict[str, Any] | None, list[Trial], list[dict[str, Any]]]:
        """Return (header, trials, other records). Ignores a torn final line."""
        if not self.exists():
            return None, [], []
        header = None
        trials: list[Trial] = []
        other: list[dict[str, Any]] = []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break  # torn write at the kill
                raise ResumeError(f"journal {self.path} is corrupt at line {i + 1}") from None
            if not isinstance(rec, dict) or rec.get("sum") != _checksum(rec):
                raise ResumeError(
                    f"journal {self.path} line {i + 1} does not match its checksum (edited or damaged)",
                    hint="resume from an intact journal, or start afresh with --force",
                )
            kind = rec.get("type")
            if kind == "header":
                header = rec
            elif kind == "trial":
                try:
                    trials.append(Trial.from_dict(rec["trial"]))
                except (KeyError, TypeError, ValueError) as exc:
                    raise ResumeError(f"journal {self.path} line {i + 1} is not a trial: {exc}") from None
            else:
                other.append(rec)
        return header, trials, other

    def open(self, header: dict[str, Any], resume: bool) -> list[Trial]:
        """Open for appending. With ``resume``, check the header and return the past trials."""
        past: list[Trial] = []
        if resume and self.exists():
            old, past, other = self.read()
            self.rounds = [list(r["numbers"]) for r in other if r.get("type") == "told"]
            self.notes = [r for r in other if r.get("type") not in (None, "told")]
            if old is None:
                raise ResumeError(f"journal {self.path} has no header")
            if old.get("version") != VERSION:
                raise ResumeError(
                    f"journal {self.path} has format {old.get('version')}, this kd-compile writes {VERSION}"
                )
            if old.get("fingerprint") != header.get("fingerprint"):
                raise ResumeError(
                    f"cannot resume: {self.path} was written by a run with different settings"
                    f"{_differences(old.get('settings'), header.get('settings'))}",
                    hint="use the same options as the interrupted run, or a new --out",
                )
            self._truncate_torn_tail()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("", encoding="utf-8")
            self._fh = self.path.open("a", encoding="utf-8")
            self._write({"type": "header", "version": VERSION, **header})
            return past
        self._fh = self.path.open("a", encoding="utf-8")
        return past

    def _truncate_torn_tail(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with self.path.open("r+b") as fh:
                fh.truncate(cut)

    def _write(self, rec: dict[str, Any]) -> None:
        assert self._fh is not None, "journal not open"
        rec = {**rec, "sum": _checksum(rec)}
        self._fh.write(json.dumps(rec, sort_keys=True, default=_json_default) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def append(self, trial: Trial) -> None:
        self._write({"type": "trial", "trial": trial.to_dict()})

    def told(self, numbers: list[int]) -> None:
        """Record one ask/tell round (the trial numbers told, in order) for exact replay."""
        self._write({"type": "told", "numbers": list(numbers)})

    def note(self, kind: str, **data: Any) -> None:
        """Write a record of ``kind`` (``"final"``: the final training's, then :attr:`finished`), then
        the last of :attr:`notes`."""
        rec = {"type": kind, **data}
        self._write(rec)
        self.notes.append(json.loads(json.dumps(rec, sort_keys=True, default=_json_default)))  # as a resume reads it

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _differences(old: Any, new: Any) -> str:
    """Which settings differ, for the refusal message (``: seed 0 -> 1, budget ...``)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return ""
    def shown(v: Any) -> str:
        return "not given" if v is None else repr(v)

    diff = [f"{k} {shown(old.get(k))} -> {shown(new.get(k))}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]
    return f": {'; '.join(diff)[:300]}" if diff else ""


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    return str(o)

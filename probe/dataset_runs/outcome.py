"""What happened to each row of a dataset run, and the summary the run prints at the end."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

TRACED, SKIPPED, FAILED = "traced", "skipped", "failed"
PENDING = "pending"  # a row on its way through an engine (never in a report)


@dataclass
class RowOutcome:
    """One row: ``status`` is ``traced`` (now), ``skipped`` (its trace was already in the store) or
    ``failed`` (``error`` says why: corrupt audio, a plugin that raised, ...)."""

    index: int
    key: str
    source: str
    status: str
    trace_id: str | None = None
    error: str | None = None
    transcript: str | None = None
    error_rate: float | None = None  # the trace's headline WER/CER against its reference, if any

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def reason(self) -> str:
        """The failure, naming the row (once)."""
        error = self.error or "failed"
        return error if self.source in error else f"{self.source}: {error}"


@dataclass
class RunReport:
    """Counts and failures of a run; :meth:`print` writes the closing summary."""

    engine: str
    outcomes: list[RowOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, outcome: RowOutcome) -> RowOutcome:
        self.outcomes.append(outcome)
        return outcome

    def count(self, status: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    @property
    def failures(self) -> list[RowOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == FAILED]

    def to_dict(self) -> dict:
        return {"engine": self.engine, "rows": len(self.outcomes), "traced": self.count(TRACED),
                "skipped": self.count(SKIPPED), "failed": self.count(FAILED), "seconds": round(self.seconds, 3),
                "failures": [{"row": o.index, "key": o.key, "source": o.source, "error": o.error}
                             for o in self.failures]}

    def print(self, out=None) -> None:
        out = out or sys.stderr
        print(f"probe: {len(self.outcomes)} rows in {self.seconds:.1f} s ({self.engine} engine): "
              f"{self.count(TRACED)} traced, {self.count(SKIPPED)} already in the store, "
              f"{self.count(FAILED)} failed", file=out)
        for outcome in self.failures:
            print(f"probe:   failed: {outcome.reason}", file=out)
        if self.failures:
            print("probe: fix or drop the failed rows (a rerun traces only the rows not yet in the store)", file=out)

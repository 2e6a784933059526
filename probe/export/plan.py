"""What a figure export draws: which figures (the core's and the plugins', for the records the
trace holds) and which 30 s windows, in the order pages and handouts show them.

A figure that shows one window (its function takes ``window=``) is drawn for each chosen window
(:func:`chosen_windows`; numbered from 1, as the dashboard labels them); figures that do not depend
on the window are drawn once.  A figure whose records the trace lacks (its plugin did not run) is
left out without a word, unless the user named it.  A time range (``--time-range START:END``,
:func:`parse_time_range`) goes to every figure whose function takes a ``time_range`` keyword and
keeps only the windows that overlap it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from probe import contributions
from probe.errors import OptionError, PluginError, ProbeError, StoreError
from probe.store import Trace

# Which windows get per-window figures by default: all of a trace of up to ALL_WINDOWS_UP_TO;
# of a longer one, the first FIRST_WINDOWS and then those decoded again, looping or skipped as no
# speech, up to MAX_DEFAULT_WINDOWS in all (a page per window of an hour would be ~120 sections).
ALL_WINDOWS_UP_TO = 8
FIRST_WINDOWS = 4
MAX_DEFAULT_WINDOWS = 12


def exportable() -> dict[str, contributions.Figure]:
    """Every figure an export can hold (drawable from the trace alone), in page order."""
    return {name: f for name, f in contributions.current().figures.items() if f.by_default}


def figure_names() -> list[str]:
    """Every figure an export can hold, in the order pages and handouts show them."""
    return list(exportable())


def selected_views(views: list[str] | None) -> tuple[list[str], bool]:
    """(figure names, whether the user picked them); names may also come comma-separated."""
    names = figure_names()
    picked = [name.strip() for view in views or [] for name in view.split(",") if name.strip()]
    unknown = [name for name in picked if name not in names]
    if unknown:
        raise OptionError(f"unknown view {', '.join(map(repr, unknown))}; "
                          f"valid views: {', '.join(names)}")
    return (list(dict.fromkeys(picked)), True) if picked else (names, False)


def chosen_windows(trace: Trace, windows: str | Iterable[int] | None = None,
                   time_range: tuple[float, float] | None = None) -> tuple[list[int], bool]:
    """(the 0-based windows an export draws per-window figures for, whether that is all of them).

    ``windows`` numbers windows from 1, as the dashboard labels them: ``"all"``, a list such as
    ``"1,3-5"``, or numbers.  By default a trace of up to :data:`ALL_WINDOWS_UP_TO` windows gets
    every window; a longer one its first :data:`FIRST_WINDOWS`, then the windows that were
    decoded again, loop or were skipped as no speech, up to :data:`MAX_DEFAULT_WINDOWS` in all.
    A number outside the trace or a list that does not parse raises a one-line
    :class:`~probe.errors.OptionError`.  With ``time_range`` (seconds, :func:`parse_time_range`)
    only windows overlapping it are drawn: by default every one of them (up to
    :data:`MAX_DEFAULT_WINDOWS`); a picked window outside it is an error.
    """
    entries = trace.manifest.get("windows") or []
    total = max(1, len(entries))
    if time_range is not None and entries:
        inside = [w["index"] for w in entries if overlaps(w, time_range)]
        if windows is None:
            return inside[:MAX_DEFAULT_WINDOWS], len(inside) == total and total <= MAX_DEFAULT_WINDOWS
        chosen, complete = chosen_windows(trace, windows)
        outside = [w for w in chosen if w not in inside]
        if outside:
            start, end = time_range
            raise OptionError(f"--windows {outside[0] + 1} lies outside --time-range {start:g}:{end:g}; the range "
                              f"covers windows {window_list(inside)}")
        return chosen, complete
    if windows is None:
        if total <= ALL_WINDOWS_UP_TO:
            return list(range(total)), True
        flagged = [w["index"] for w in entries[FIRST_WINDOWS:] if window_flags(w)]
        chosen = list(range(FIRST_WINDOWS)) + flagged[:MAX_DEFAULT_WINDOWS - FIRST_WINDOWS]
        return chosen, len(chosen) == total
    numbers = _window_numbers(windows, total)
    if not numbers:
        raise OptionError("--windows names no window; give all, or numbers such as 1,3-5")
    bad = [n for n in numbers if not 1 <= n <= total]
    if bad:
        has = "1 window" if total == 1 else f"windows 1–{total}"
        raise OptionError(f"--windows {bad[0]}: trace {trace.id} has {has} (numbered from 1, as "
                          "the dashboard shows them)")
    chosen = sorted({n - 1 for n in numbers})
    return chosen, len(chosen) == total


def parse_time_range(trace: Trace, time_range: str | tuple[float, float] | None) -> tuple[float, float] | None:
    """``"START:END"`` (seconds of the clip) or a pair as (start, end); None stays None.  Text that
    is not two numbers, an end not after its start, or a span outside the clip raises a one-line
    :class:`~probe.errors.OptionError`."""
    if time_range is None:
        return None
    text = time_range if isinstance(time_range, str) else ":".join(str(t) for t in time_range)
    first, colon, last = text.partition(":")
    try:
        start, end = float(first), float(last)
    except ValueError:
        start = end = float("nan")
    if not colon or not (math.isfinite(start) and math.isfinite(end)):
        raise OptionError(f"--time-range {text!r} is not START:END in seconds; write e.g. 2.5:10")
    if end <= start:
        raise OptionError(f"--time-range {text}: the end must come after the start; write START:END with "
                          "START < END, e.g. 2.5:10")
    if start < 0:
        raise OptionError(f"--time-range {text}: the start must not be negative; seconds count from 0")
    length = clip_seconds(trace)
    if length is not None and end > length + 0.01:
        raise OptionError(f"--time-range {text} runs past the end of the clip; trace {trace.id} is "
                          f"{length:.2f} s long, so end it by {length:.2f}")
    return start, end


def clip_seconds(trace: Trace) -> float | None:
    """The audio's length in seconds (the manifest's audio duration, else where the last window ends)."""
    audio = trace.manifest.get("audio")
    duration = audio.get("duration") if isinstance(audio, dict) else None
    if isinstance(duration, (int, float)):
        return float(duration)
    windows = trace.manifest.get("windows") or []
    return max((float(w["end"]) for w in windows), default=None)


def overlaps(window: dict, time_range: tuple[float, float]) -> bool:
    """Whether a window's span (seconds) shares any time with ``time_range``."""
    return window["start"] < time_range[1] and window["end"] > time_range[0]


def _window_numbers(windows: str | Iterable[int], total: int) -> list[int]:
    """The 1-based window numbers ``windows`` names (``all``, ``1,3-5`` or numbers)."""
    if not isinstance(windows, str):
        return [int(n) for n in windows]
    text = windows.strip().lower()
    if text == "all":
        return list(range(1, total + 1))
    numbers = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.strip().isdigit() or (dash and not last.strip().isdigit()):
            raise OptionError(f"--windows {windows!r} is not a list of windows; give all, or window "
                              "numbers and ranges counted from 1 such as 1,3-5")
        first_n, last_n = int(first), int(last) if dash else int(first)
        if last_n < first_n:
            raise OptionError(f"--windows {part.strip()} runs backwards; write "
                              f"{last_n}-{first_n}")
        numbers += range(first_n, last_n + 1)
    return numbers


def window_flags(window: dict) -> list[str]:
    """Why a window deserves a look: decoded again, a repetition loop, skipped as no speech."""
    attempts = len(window.get("attempts") or [])
    return [flag for flag, on in ((f"decoded {attempts} times", attempts > 1),
                                  ("repetition loop", (window.get("signals") or {}).get("looping")),
                                  ("skipped: no speech", window.get("skipped"))) if on]


def window_list(windows: list[int]) -> str:
    """0-based windows as the 1-based list a user would type: ``1-4, 9, 17``."""
    runs: list[list[int]] = []
    for n in (w + 1 for w in windows):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def caption(name: str) -> str:
    """What figure ``name`` shows, for captions (its registered caption, else its name)."""
    found = contributions.current().figures.get(name)
    return (found.caption if found and found.caption else name.replace("_", " "))


def label(name: str, window: int | None) -> str:
    """A figure's caption, led by its window (numbered from 1) when it shows one."""
    return caption(name) if window is None else f"Window {window + 1} · {caption(name)}"


class FigurePlan:
    """(figure, window) pairs in the order pages show them, and why; each figure drawn once.

    A trace of one window draws every figure once.  A longer one draws the figures that do not
    depend on the window once, then each chosen window's own figures (window ``None``: the
    figure's default).  Figures whose records the trace lacks are not planned, unless picked.
    ``time_range`` (seconds) goes to every figure whose function takes a ``time_range`` keyword.

    One plan serves every format of an export: a figure is drawn the first time a format asks for
    it and kept, each file format saved from that one drawing (:mod:`.render`)."""

    def __init__(self, trace: Trace, names: list[str], picked: bool, windows: list[int],
                 complete: bool, requested: bool, time_range: tuple[float, float] | None = None):
        self.trace, self.picked = trace, picked
        self.windows, self.complete, self.requested = windows, complete, requested
        self.time_range = time_range
        self.total = len(trace.manifest.get("windows") or [])
        found = exportable()
        self.figures = {name: found[name] for name in names if picked or found[name].available(trace)}
        names = list(self.figures)
        if self.total <= 1:
            self.pairs: list[tuple[str, int | None]] = [(name, None) for name in names]
        else:
            once = [name for name in names if not self.figures[name].per_window]
            each = [name for name in names if self.figures[name].per_window]
            self.pairs = [(name, None) for name in once] + [(name, w) for w in windows for name in each]
        self.keep = False  # keep each drawn figure for the next format (an export of several)
        self._drawn: dict[tuple[str, int | None], Any] = {}  # (name, window) → Figure or the error drawing it
        # (name, window, format, dpi) → bytes that worker processes saved (render.prerender)
        self.prerendered: dict[tuple[str, int | None, str, int], bytes] = {}
        self.prepared: dict[str, Any] = {}  # what a writer made while the workers drew (render.prerender)

    @classmethod
    def of(cls, trace: Trace, views: list[str] | None, windows: str | Iterable[int] | None,
           time_range: str | tuple[float, float] | None = None) -> "FigurePlan":
        names, picked = selected_views(views)
        span = parse_time_range(trace, time_range)
        chosen, complete = chosen_windows(trace, windows, span)
        return cls(trace, names, picked, chosen, complete, windows is not None or span is not None, span)

    @property
    def per_window(self) -> bool:
        return self.total > 1

    def note(self) -> str | None:
        """What a default selection left out, and how to get it (None when nothing was)."""
        if self.complete or self.requested or not self.per_window:
            return None
        return (f"Per-window figures are drawn for windows {window_list(self.windows)} of "
                f"{self.total}: the first {FIRST_WINDOWS} and those decoded again, looping or skipped "
                f"as no speech. Export every window with `probe export {self.trace.id} --windows all`, "
                "or pick some with e.g. `--windows 5-8`.")

    def options(self, name: str, window: int | None) -> dict[str, Any]:
        """The keywords figure ``name`` is drawn with: its window (if any) and the time range,
        each only where the figure's function takes it."""
        parameters = self.figures[name].parameters
        options: dict[str, Any] = {} if window is None else {"window": window}
        if self.time_range is not None and "time_range" in parameters:
            options["time_range"] = self.time_range
        return options

    def attempt(self, name: str, window: int | None, make: Callable[[], Any],
                skipped: list[tuple[str, int | None, str]] | None = None) -> Any:
        """``make()``'s result, or None when the figure cannot be drawn from this trace's records.

        A corrupt or incomplete record is an error when the user named the figure; among all
        figures it is left out and noted in ``skipped`` as (name, window, reason).  Any other
        exception is the plugin's bug: a one-line :class:`PluginError` naming it."""
        figure = self.figures[name]
        try:
            return make()
        except ProbeError as err:
            if self.picked:
                raise
            if skipped is not None:
                skipped.append((name, window, str(err)))
            return None
        except Exception as exc:  # a plugin's bug: one line naming it, and how to export without it
            raise PluginError(f"plugin {figure.plugin!r} raised drawing figure {name!r}: {type(exc).__name__}: "
                              f"{exc} (leave it out with --views, or the plugin with -p no:{figure.plugin})") \
                from exc

    def figure(self, name: str, window: int | None) -> Any:
        """Figure ``name`` of ``window``; with :attr:`keep` (an export of several formats) drawn
        on first use and kept for every later format, and a record it cannot be drawn from raises
        the same :class:`ProbeError` each time without trying again."""
        key = (name, window)
        found = self._drawn.get(key)
        if found is None:
            try:
                found = self.figures[name].function(self.trace, **self.options(name, window))
            except ProbeError as err:
                self._drawn[key] = err
                raise
            if self.keep:
                self._drawn[key] = found
        if isinstance(found, Exception):
            raise found
        return found

    def failed(self, pair: tuple[str, int | None], error: ProbeError | tuple[str, str]) -> None:
        """Keep what drawing ``pair`` raised in a worker process (:func:`.render.prerender`): a
        :class:`ProbeError`, or a plugin's exception as (type name, message), re-raised under that
        type's name so :meth:`attempt` reports it as if it had happened here."""
        if not isinstance(error, ProbeError):
            kind, message = error
            error = type(kind, (Exception,), {"__module__": "builtins"})(message)
        self._drawn[pair] = error

    def check(self) -> None:
        """Raise now what :meth:`attempt` would raise for a figure that failed in a worker process
        (a plugin's bug; a record the user's pick needs), before any file of the export is written."""
        for (name, window), found in list(self._drawn.items()):
            if isinstance(found, Exception):
                self.attempt(name, window, lambda: self.figure(name, window))

    def file_stem(self, name: str, window: int | None) -> str:
        """``<trace>-<view>``, with ``-window-<n>`` (zero-padded to sort) for a window's figure."""
        if window is None:
            return f"{self.trace.id}-{name}"
        return f"{self.trace.id}-{name}-window-{window + 1:0{len(str(self.total))}d}"

    def no_figures(self) -> StoreError:
        names = list(dict.fromkeys(name for name, _ in self.pairs))
        return StoreError(f"trace {self.trace.id} has no records for "
                          f"{', '.join(names) if self.picked else 'any figure'}; "
                          "re-run it with the plugins that make them enabled")

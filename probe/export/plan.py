"""What a figure export draws: which figures (the core's and the plugins', for the records the
trace holds) and which 30 s windows, in the order pages and handouts show them.

A figure that shows one window (its function takes ``window=``) is drawn for each chosen window
(:func:`chosen_windows`; numbered from 1, as the dashboard labels them); figures that do not depend
on the window are drawn once.  A figure whose records the trace lacks (its plugin did not run) is
left out without a word, unless the user named it.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

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


def chosen_windows(trace: Trace, windows: str | Iterable[int] | None = None) -> tuple[list[int], bool]:
    """(the 0-based windows an export draws per-window figures for, whether that is all of them).

    ``windows`` numbers windows from 1, as the dashboard labels them: ``"all"``, a list such as
    ``"1,3-5"``, or numbers.  By default a trace of up to :data:`ALL_WINDOWS_UP_TO` windows gets
    every window; a longer one its first :data:`FIRST_WINDOWS`, then the windows that were
    decoded again, loop or were skipped as no speech, up to :data:`MAX_DEFAULT_WINDOWS` in all.
    A number outside the trace or a list that does not parse raises a one-line
    :class:`~probe.errors.OptionError`.
    """
    entries = trace.manifest.get("windows") or []
    total = max(1, len(entries))
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
    """(figure, window) pairs in the order pages show them, and why.

    A trace of one window draws every figure once.  A longer one draws the figures that do not
    depend on the window once, then each chosen window's own figures (window ``None``: the
    figure's default).  Figures whose records the trace lacks are not planned, unless picked."""

    def __init__(self, trace: Trace, names: list[str], picked: bool, windows: list[int],
                 complete: bool, requested: bool):
        self.trace, self.picked = trace, picked
        self.windows, self.complete, self.requested = windows, complete, requested
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

    @classmethod
    def of(cls, trace: Trace, views: list[str] | None, windows: str | Iterable[int] | None) -> "FigurePlan":
        names, picked = selected_views(views)
        chosen, complete = chosen_windows(trace, windows)
        return cls(trace, names, picked, chosen, complete, windows is not None)

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

    def drawn(self, skipped: list[tuple[str, int | None, str]] | None = None) \
            -> Iterator[tuple[str, int | None, Any]]:
        """(name, window, figure) for each pair, drawn one at a time as they are written.

        A figure that cannot be drawn (a corrupt or incomplete record) is an error when the user
        named it; among all figures it is left out and noted in ``skipped`` as (name, window,
        reason)."""
        for name, window in self.pairs:
            figure = self.figures[name]
            try:
                fig = figure.function(self.trace) if window is None else figure.function(self.trace, window=window)
            except ProbeError as err:
                if self.picked:
                    raise
                if skipped is not None:
                    skipped.append((name, window, str(err)))
                continue
            except Exception as exc:  # a plugin's bug: one line naming it, and how to export without it
                raise PluginError(f"plugin {figure.plugin!r} raised drawing figure {name!r}: {type(exc).__name__}: "
                                  f"{exc} (leave it out with --views, or the plugin with -p no:{figure.plugin})") \
                    from exc
            yield name, window, fig

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

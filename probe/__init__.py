"""whisper-probe: see what OpenAI's Whisper does, on real audio and real decoding.

The public API, all of it:

- :func:`run` — trace audio (a path, a 16 kHz array, or a list) with a Whisper model and return the
  stored :class:`Trace` (records by name, transcript, words, audio).
- :func:`run_dataset` — trace every row of a ``datasets`` dataset (resumably; ``engine="ray"`` on
  Ray Data) and return the run's report; ``probe summary`` / :func:`probe.summary.summary_table`
  list the traces with their WER/CER.
- :class:`Store` — a folder of traces: ``list()``, ``open(id)``, ``delete(id)``, ``resolve(ref)``.
- :func:`load_model` — any Whisper checkpoint (hub id, transformers or CTranslate2 directory, openai
  ``.pt``, or the embedded offline default) on ``device="auto"`` / ``dtype="auto"``.
- :func:`load_audio` — any audio file, decoded to 16 kHz mono.
- :func:`dashboard` — serve the dashboard in the background (from a notebook): returns an object
  whose ``str`` is its URL, shown in a notebook as an ``<iframe>``, with ``.stop()``.  A trace
  shows itself in a notebook too, and ``trace.figure(name)`` / ``trace.show(name)`` draw figures.
- :func:`list_points` / :func:`select_points` — hook-point names with shapes for a model config.
- :data:`hookimpl` — decorator for plugin hook implementations (see :mod:`probe.hookspecs`).
- :class:`ProbeError` — every error a user can cause.
"""

__version__ = "0.1.0"

from probe.errors import ProbeError  # noqa: E402
from probe.hookspecs import PROBE_API_VERSION, hookimpl  # noqa: E402

__all__ = ["run", "run_dataset", "Store", "Trace", "load_model", "load_audio", "dashboard", "list_points", "select_points", "hookimpl",
           "ProbeError", "PROBE_API_VERSION", "__version__"]


def __getattr__(name):
    # Heavy imports (torch, transformers) wait until first use, so `probe --help` stays fast.
    if name == "run":
        from probe.runner import run
        return run
    if name == "run_dataset":
        from probe.dataset_runs.run import run_dataset
        return run_dataset
    if name in ("Store", "Trace"):
        from probe import store
        return getattr(store, name)
    if name == "load_model":
        from probe.models import load_model
        return load_model
    if name == "load_audio":
        from probe.audio import load_audio
        return load_audio
    if name == "dashboard":
        from probe.notebook import dashboard
        return dashboard
    if name in ("list_points", "select_points"):
        from probe import points
        return getattr(points, name)
    raise AttributeError(f"module 'probe' has no attribute {name!r}")

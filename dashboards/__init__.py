"""The Streamlit dashboard: :func:`serve` runs it for a store (``probe dashboard``).

The app itself is ``app.py`` (router and sidebar) with one script per core view under ``views/``
(Overview, Audio, Windows, Lesson, Compare, Plugin records, New trace, and the store-level
Dataset and Sweeps pages) and the core's lesson steps
in ``steps.py``; ``context.py`` holds what views share (store, trace picker, cached reads, figures
as images, plugin pages).  Every other page is a plugin's (``probe_dashboard_views``, collected
by :mod:`probe.contributions`), the built-ins' too; every picture is a figure of
:mod:`probe.figures` or a plugin's, the same the lecture export draws.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

from probe.errors import ProbeError

APP = Path(__file__).with_name("app.py")


def serve(store: str | os.PathLike | None = None, host: str = "127.0.0.1", port: int = 8501,
          plugins: list[str] = ()) -> int:
    """Serve the dashboard for ``store`` (default: the user store) at ``http://host:port`` until
    interrupted; returns Streamlit's exit code (0 after Ctrl-C).  ``plugins``: ``-p`` references
    (modules, ``.py`` files, ``no:NAME``) whose pages and figures it shows beside the built-ins
    and entry points."""
    process, store_path = launch(store, host, port, plugins)
    print(f"probe: dashboard for {store_path} at http://{host}:{port} (Ctrl-C stops it)", file=sys.stderr)

    def stop(signum, frame):  # `kill` of probe dashboard stops Streamlit too, freeing the port
        process.terminate()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return process.wait()
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached Streamlit too; let it finish
        process.wait()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if process.poll() is None:
            process.terminate()
            process.wait()


def launch(store: str | os.PathLike | None, host: str, port: int, plugins: list[str] = (),
           **popen) -> tuple[subprocess.Popen, Path]:
    """Start Streamlit serving the dashboard for ``store`` at ``host:port`` in the background:
    (the process, the store folder).  Everything a user can get wrong (no streamlit, a bad port
    or one in use, a store folder that cannot be used, a bad ``-p``) fails here in one line.
    ``popen``: more :class:`subprocess.Popen` arguments (where its output goes).  Used by
    :func:`serve` (``probe dashboard``) and :func:`probe.dashboard` (notebooks)."""
    from probe.store import Store

    if importlib.util.find_spec("streamlit") is None:
        raise ProbeError("the dashboard needs streamlit; install it with `pip install streamlit`")
    if not 0 < int(port) < 65536:
        raise ProbeError(f"--port must be between 1 and 65535 (got {port})")
    if not port_free(host, int(port)):
        raise ProbeError(f"port {port} on {host} is in use (another dashboard?); choose another port")
    store_path = Store(store).path  # fails here, in one line, if the folder cannot be used
    plugins = [str(Path(ref).expanduser().resolve()) if str(ref).endswith(".py") else str(ref) for ref in plugins]
    from probe.plugin_manager import get_plugin_manager

    get_plugin_manager(plugins, presentation=True)  # a bad -p fails here, in one line, not in the browser
    command = [sys.executable, "-m", "streamlit", "run", str(APP),
               "--server.address", host, "--server.port", str(port), "--server.headless", "true",
               "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
               "--client.toolbarMode", "minimal", "--", "--store", str(store_path),
               *[arg for ref in plugins for arg in ("--plugin", ref)]]
    process = subprocess.Popen(command, preexec_fn=_die_with_parent if sys.platform == "linux" else None, **popen)
    return process, store_path


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (as Streamlit's does, with SO_REUSEADDR,
    so a port left in TIME_WAIT by a stopped dashboard counts as free)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe_socket:
        probe_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe_socket.bind((host, port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    """In the Streamlit child on Linux: get SIGTERM when ``probe dashboard`` dies, even by SIGKILL."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

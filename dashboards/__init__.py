"""The Streamlit dashboard: :func:`serve` runs it for a store (``probe dashboard``).

The app itself is ``app.py`` (router and sidebar) with one script per view under ``views/``;
``context.py`` holds what views share (store, trace picker, cached reads, figures as images) and
``registry.py`` collects views that plugins add through ``probe_dashboard_views``.  Every picture
comes from :mod:`probe.figures`, the module the lecture export draws with too.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from probe.errors import ProbeError

APP = Path(__file__).with_name("app.py")


def serve(store: str | os.PathLike | None = None, host: str = "127.0.0.1", port: int = 8501) -> int:
    """Serve the dashboard for ``store`` (default: the user store) at ``http://host:port`` until
    interrupted; returns Streamlit's exit code (0 after Ctrl-C)."""
    from probe.store import Store

    if importlib.util.find_spec("streamlit") is None:
        raise ProbeError("the dashboard needs streamlit; install it with `pip install streamlit`")
    if not 0 < int(port) < 65536:
        raise ProbeError(f"--port must be between 1 and 65535 (got {port})")
    store_path = Store(store).path  # fails here, in one line, if the folder cannot be used
    command = [sys.executable, "-m", "streamlit", "run", str(APP),
               "--server.address", host, "--server.port", str(port), "--server.headless", "true",
               "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
               "--client.toolbarMode", "minimal", "--", "--store", str(store_path)]
    print(f"probe: dashboard for {store_path} at http://{host}:{port} (Ctrl-C stops it)", file=sys.stderr)
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached Streamlit too; let it finish
        process.wait()
        return 0

"""Shared fixtures.

Fast tests use ``tiny`` (a tiny random-initialised Whisper with the real tokenizer).  Integration
tests (marked ``integration``) use ``base``: the real multilingual Whisper base weights installed by
pip and converted exactly, decoding the example speech clips under ``examples/``.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # the cores shared out: one torch thread pool per core, not per worker
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def tiny():
    from probe.models import tiny_random_model

    return tiny_random_model()


@pytest.fixture(scope="session")
def base():
    from probe.models import load_model

    return load_model(None, device="cpu", dtype="float32")


@pytest.fixture
def store(tmp_path):
    from probe.store import Store

    return Store(tmp_path / "store")


@pytest.fixture(scope="session")
def en_clip():
    return EXAMPLES / "en_fox.flac"


@pytest.fixture(scope="session")
def zh_clip():
    return EXAMPLES / "zh_hello.flac"


@pytest.fixture
def tone():
    """2 s of a 440 Hz tone at 16 kHz: audio for the tiny random model."""
    t = np.arange(32000) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def store_snapshot(path: Path) -> list[str]:
    """Every file under a store, relative: what 'the store is unchanged' compares."""
    if not Path(path).exists():
        return []
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*"))


# One plugin per run hook that raises there (a file body after `from probe import hookimpl` and `@hookimpl`).
HOOK_BODIES = {
    "probe_run_start": "def probe_run_start(run):\n    raise ValueError('bad start')",
    "probe_decode_points": "def probe_decode_points(run):\n    raise ValueError('bad points')",
    "probe_replay_points": "def probe_replay_points(run):\n    raise ValueError('bad replay')",
    "probe_rejected_points": "def probe_rejected_points(run):\n    raise ValueError('bad rejected')",
    "probe_capture": "def probe_decode_points(run):\n    return ['encoder.hook_conv1']\n\n@hookimpl\n"
                     "def probe_capture(run, point, tensor, ctx):\n    raise ValueError('bad capture')",
    "probe_window_end": "def probe_window_end(run, window):\n    raise ValueError('bad window')",
    "probe_run_end": "def probe_run_end(run, writer):\n    writer.add_json('faulty.x', {}, plugin='faulty')\n"
                     "    raise ValueError('bad end')",
}

"""The wheel: built from the repo, it installs `probe` with its plugins and dashboards, and no
generic top-level `plugins`/`dashboards` packages."""

import configparser
import shutil
from pathlib import Path
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools reuses a checkout's build/ folder, where modules that moved linger
    source = tmp_path_factory.mktemp("source") / "whisper-probe"
    at_root = {".venv", ".git", "build", ".pytest_cache", ".whl", "store", "demo-store", "out"}
    anywhere = shutil.ignore_patterns("*.egg-info", "__pycache__")
    shutil.copytree(ROOT, source, ignore=lambda folder, names: set(anywhere(folder, names)) | (
        at_root & set(names) if Path(folder) == ROOT else set()))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True)
    return next(out.glob("whisper_probe-*.whl"))


def test_wheel_contents_live_under_probe(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"probe"}
    for module in ("probe/plugins/token_probs/capture.py", "probe/plugins/cross_attention/present.py",
                   "probe/dashboards/app.py", "probe/dashboards/views/lesson.py", "probe/cli/__init__.py", "probe/export/page.py",
                   "probe/figures/base.py", "probe/store/trace.py", "probe/tracer/__init__.py"):
        assert module in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "probe = probe.cli:main" in entry_points


def test_installed_wheel_imports_and_runs(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import probe, probe.plugins.token_probs.capture, probe.contributions, probe.cli; "
            "print(probe.__file__); assert len(probe.contributions.current().views) >= 6; "
            "probe.cli.main(['plugins', '--json'])")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                 "WHISPER_PROBE_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(target / "probe"))
    assert '"name": "cross_attention"' in result.stdout


def test_every_package_of_the_tree_is_in_setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    roots = {"probe": ROOT / "probe", "probe.plugins": ROOT / "plugins", "probe.dashboards": ROOT / "dashboards"}
    found = {".".join([name, *init.parent.relative_to(root).parts])
             for name, root in roots.items() for init in root.rglob("__init__.py")}
    assert found == listed

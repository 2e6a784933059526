"""The benchmark script runs end to end (tiny random model) and writes the JSON the README describes."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_benchmark_writes_every_arm_with_machine_versions_and_faithful_tokens(tmp_path):
    out = tmp_path / "tiny.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench.py", "--device", "cpu", "--model", "tiny", "--repeats", "1",
         "--tokens", "4", "--batch", "2", "--batches", "2", "--no-dashboard", "--profile", "no", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {"hostname", "cpu_model", "cpu_cores"} <= report["machine"].keys()
    assert {"torch", "transformers", "whisper_probe"} <= report["versions"].keys()
    arms = report["arms"]
    assert set(arms) == {"features", "plain", "lecture", "full", "hf_outputs", "naive_hooks"}
    for name in ("lecture", "full", "hf_outputs", "naive_hooks"):
        assert arms[name]["tokens_equal_plain"] is True, name  # every arm decodes what plain generate() does
        assert arms[name]["ratio_to_plain"] == round(arms[name]["median_s"] / arms["plain"]["median_s"], 4)
    assert arms["full"]["bytes_captured"] > arms["lecture"]["bytes_captured"] > 0
    batched = report["batched"]
    assert batched["arms"]["lecture_batched"]["clips"] == 4 and batched["arms"]["lecture_batched"]["tokens_equal_plain"]
    assert batched["throughput_ratio"] > 0
    assert {"cpu_lecture_ratio", "batched_throughput_ratio"} <= report["targets"].keys()

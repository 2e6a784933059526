#!/usr/bin/env python
"""whisper-probe overhead benchmark: plain ``generate()`` vs tracing vs the usual peers, in ONE process.

Every arm decodes the same 30 s input (the example clips tiled) with the same model, with the
decoding length FIXED (``min_new_tokens == max_new_tokens``), so arms do the same amount of work:

- ``plain``      ``model.generate(input_features, language="en", task="transcribe", min/max_new_tokens=N)``
                 with the model's default attention (features computed outside the clock; their cost
                 is reported separately as ``features``).
- ``lecture``    whisper-probe, plugins token_probs + cross_attention + activations (its default set:
                 conv stem + per-layer residual norms), i.e. ``get_plugin_manager(disabled=["attention",
                 "logit_lens"])``.  ``decode_s`` = ``Tracer.trace`` (features, encoder, language/no-speech
                 step, ``generate`` with hooks, replay, window-end plugin work); ``total_s`` adds writing the
                 trace into a temporary store (``probe.runner.write_trace``).
- ``full``       activations plugin alone with ``--points`` ``*.hook_resid_pre``, ``*.hook_resid_post``,
                 ``*.hook_pattern`` (float16), written to the store; bytes captured reported.
- ``hf_outputs`` ``generate(..., output_attentions=True, output_scores=True, output_hidden_states=True,
                 return_dict_in_generate=True)`` on the same weights switched to eager attention.
- ``naive_hooks`` forward hooks on every leaf module doing ``.detach().cpu()`` of each output.
- batched throughput: a dataset of ``--batches`` × B different 30 s inputs through
  ``probe.runner.trace_clips(..., batch_size=B)`` (lecture profile; what ``probe run --batch-size B``
  runs: store writes on the background writer thread) vs one plain ``generate()`` per batch of B.
- dashboard first view: in a fresh process, open the largest trace made here and draw
  ``probe.figures.FIGURES["waveform"]`` / ``["cross_attention"]`` to PNG as the dashboard does.

The process starts with :func:`probe.malloc.keep_freed_memory` (as ``probe run`` does), so every
arm, plain included, runs with glibc keeping freed memory for reuse.
Arms are warmed up once, then run round-robin (the order rotates each repeat) so slow drift on a
shared machine hits every arm alike.  Run ``python benchmarks/bench.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import datetime
import io
import json
import os
import platform
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WHISPER_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import probe  # noqa: E402
from probe.audio import audio_from_array, load_audio  # noqa: E402
from probe.malloc import keep_freed_memory  # noqa: E402
from probe.models import LoadedModel, load_model, quiet_transformers, tiny_random_model  # noqa: E402
from probe.plugin_manager import get_plugin_manager  # noqa: E402
from probe.runner import trace_clips, write_trace  # noqa: E402
from probe.store import Store  # noqa: E402
from probe.tracer import DecodeOptions, Tracer  # noqa: E402

SAMPLE_RATE = 16000
EXAMPLES = ("en_fox.flac", "en_lecture.flac", "zh_hello.flac")
LECTURE_DISABLED = ["attention", "logit_lens"]
FULL_POINTS = ["*.hook_resid_pre", "*.hook_resid_post", "*.hook_pattern"]
FULL_DISABLED = ["attention", "logit_lens", "cross_attention", "token_probs"]
PINNED_D2H_FALLBACK = 54e9  # bytes/s, H100, docs: /work/shared/ENVIRONMENT.md "GPU"
TARGETS = {
    "cuda_lecture_ratio": 1.10,  # CUDA large-v3: lecture ≤ 1.10× plain
    "cuda_lecture_peak_memory_ratio": 1.15,  # peak device memory ≤ plain + 15 %
    "cpu_lecture_ratio": 1.15,  # CPU base: lecture ≤ 1.15× plain
    "batched_throughput_ratio": 0.90,  # lecture batched ≥ 0.9× plain batched clips/s
    "dashboard_first_view_s": 2.0,  # open a trace + first figure < 2 s
}


# --------------------------------------------------------------------------- machine & memory


def read_proc_kb(path: str, key: str) -> int | None:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def machine_info() -> dict:
    cpu_model = None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            cpu_model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model or platform.processor() or None,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": affinity,
        "ram_bytes": read_proc_kb("/proc/meminfo", "MemTotal"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


class PeakMemory:
    """Peak memory of one arm.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (``peak_bytes``, absolute,
    weights included) and the rise over what was allocated at the start (``peak_delta_bytes``).
    CPU: the process's resident high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``)
    and its rise over ``VmRSS`` at the start.  glibc keeps freed pages, so a CPU delta is a lower bound
    (an arm can reuse memory an earlier arm freed).  ``None`` where it cannot be measured.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = self.peak_delta_bytes = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.start = None
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")  # reset VmHWM to the current RSS
                self.start = read_proc_kb("/proc/self/status", "VmRSS")
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            self.peak_delta_bytes = self.peak_bytes - self.start
        elif self.start is not None:
            hwm = read_proc_kb("/proc/self/status", "VmHWM")
            if hwm is not None:
                self.peak_bytes, self.peak_delta_bytes = hwm, max(0, hwm - self.start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensor_bytes(obj, seen: set | None = None) -> int:
    """Bytes of every distinct tensor inside tuples/lists/dicts/ModelOutputs (caches are skipped)."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for k, v in obj.items() if k not in ("past_key_values", "sequences"))
    if isinstance(obj, (tuple, list)):
        return sum(tensor_bytes(v, seen) for v in obj)
    return 0


def trace_sizes(trace) -> dict:
    """Bytes of the trace's tensor records (shape × dtype) and of its folder on disk."""
    tensor = 0
    for entry in trace.records.values():
        if entry.get("kind") == "tensor" and entry.get("shape") is not None:
            tensor += int(np.prod(entry["shape"], dtype=np.int64)) * np.dtype(entry["dtype"]).itemsize
    disk = sum(f.stat().st_size for f in Path(trace.path).rglob("*") if f.is_file())
    return {"tensor_record_bytes": int(tensor), "trace_disk_bytes": int(disk), "records": len(trace.records)}


# --------------------------------------------------------------------------- models


def large_v3_shape_model(device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Random weights in the shape of openai/whisper-large-v3 (1280 wide, 32 + 32 layers, 20 heads,
    128 mels, 51866 tokens: base's tokenizer with ``<|yue|>`` added as large-v3 did).  Built directly on
    ``device`` in ``dtype`` so it takes seconds on a GPU.  Noise in, noise out: for timing only."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    from probe import convert, models

    embedded = models._embedded(models.DEFAULT_EMBEDDED)
    metadata = embedded.metadata_dir()
    ct2_config = json.loads((metadata / "config.json").read_text(encoding="utf-8"))
    spec = json.loads((metadata / "tokenizer.json").read_text(encoding="utf-8"))
    base_tokenizer = convert.whisper_tokenizer(spec)
    tokenizer = convert.whisper_tokenizer(convert.tokenizer_json_with_extra_language(spec, "<|yue|>"))
    dims = convert.WhisperDims(
        n_mels=128, vocab_size=len(tokenizer), d_model=1280, encoder_layers=32, encoder_heads=20,
        decoder_layers=32, decoder_heads=20, ffn_dim=5120, max_source_positions=1500,
        max_target_positions=convert.MAX_TARGET_POSITIONS)
    generation_config = convert.whisper_generation_config(
        tokenizer, is_multilingual=True,
        # large-v3's published alignment heads
        alignment_heads=[[7, 0], [10, 17], [12, 18], [13, 12], [16, 1], [17, 14], [19, 11], [21, 4],
                         [24, 1], [25, 6]],
        suppress_tokens=convert._remap_token_ids(ct2_config.get("suppress_ids", []), base_tokenizer, tokenizer),
        begin_suppress_tokens=convert._remap_token_ids(ct2_config.get("suppress_ids_begin", []), base_tokenizer,
                                                       tokenizer),
    )
    config = convert.whisper_model_config(dims, tokenizer, {"source": "random init, large-v3 shape",
                                                            "source_format": "random"})
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device), torch.random.fork_rng(devices=[]), quiet_transformers():
            torch.manual_seed(0)
            model = WhisperForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config = generation_config
    model = model.to(device=device, dtype=dtype).eval()
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer)
    return LoadedModel(model=model, processor=processor, model_id="random:large-v3-shape",
                       source="random weights of openai/whisper-large-v3's shape (timing only)",
                       device=device, dtype=dtype, is_multilingual=True,
                       alignment_heads=[tuple(h) for h in generation_config.alignment_heads])


def build_model(name: str, device: str, dtype: str) -> LoadedModel:
    from probe.models import resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if name == "base":
        return load_model(None, device=str(torch_device), dtype=str(torch_dtype).removeprefix("torch."))
    if name == "tiny":
        loaded = tiny_random_model()
        loaded.model.to(device=torch_device, dtype=torch_dtype)
        return dataclasses.replace(loaded, device=torch_device, dtype=torch_dtype)
    if name == "large-v3-shape":
        return large_v3_shape_model(torch_device, torch_dtype)
    raise SystemExit(f"unknown --model {name!r}")


@contextlib.contextmanager
def eager_attention(model):
    """The same weights with eager attention for the duration (output_attentions needs it)."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


# --------------------------------------------------------------------------- inputs


def thirty_seconds(seconds: float, shift: int = 0) -> np.ndarray:
    """The example clips concatenated (order rotated by ``shift``) and tiled to ``seconds``."""
    clips = [load_audio(ROOT / "examples" / name).samples for name in EXAMPLES]
    clips = clips[shift % len(clips):] + clips[:shift % len(clips)]
    gap = np.zeros(int(0.3 * SAMPLE_RATE), dtype=np.float32)
    one = np.concatenate([piece for clip in clips for piece in (clip, gap)])
    n = int(round(seconds * SAMPLE_RATE))
    tiled = np.tile(one, n // len(one) + 1)[:n]
    if shift:
        tiled = np.roll(tiled, shift * int(1.7 * SAMPLE_RATE))
    return np.ascontiguousarray(tiled, dtype=np.float32)


def features_of(loaded: LoadedModel, samples_list: list[np.ndarray]) -> torch.Tensor:
    extractor = loaded.processor.feature_extractor
    feats = extractor(samples_list, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    return feats.to(loaded.device, loaded.dtype)


def generated_tokens(sequence: list[int], prompt: list[int], eot: int) -> list[int]:
    """generate()'s row without the forced prompt (when present), cut after the first <|endoftext|>."""
    if sequence[:len(prompt)] == prompt:
        sequence = sequence[len(prompt):]
    if eot in sequence:
        sequence = sequence[:sequence.index(eot) + 1]
    return sequence


def sequences_of(out) -> torch.Tensor:
    return out.sequences if hasattr(out, "sequences") else out


# --------------------------------------------------------------------------- the arms


class Bench:
    def __init__(self, args, loaded: LoadedModel):
        self.args, self.loaded = args, loaded
        self.device = loaded.device
        self.model = loaded.model
        self.tokens = args.tokens
        self.options = lambda: DecodeOptions(language="en", task="transcribe", max_new_tokens=args.tokens,
                                             min_new_tokens=args.tokens)
        self.samples = thirty_seconds(args.seconds)
        self.clip = audio_from_array(self.samples, SAMPLE_RATE, source="bench-30s")
        self.features = features_of(loaded, [self.samples])
        # the dataset for the throughput arms: --batches batches of --batch different 30 s inputs
        self.batch_samples = [thirty_seconds(args.seconds, shift=b) for b in range(args.batch * args.batches)]
        self.batch_clips = [audio_from_array(s, SAMPLE_RATE, source=f"bench-30s-{b}")
                            for b, s in enumerate(self.batch_samples)]
        self.batch_features = [features_of(loaded, self.batch_samples[i:i + args.batch])
                               for i in range(0, len(self.batch_samples), args.batch)]
        self.store_dir = Path(tempfile.mkdtemp(prefix="whisper-probe-bench-"))
        self.store = Store(self.store_dir)
        self.lecture_tracer = Tracer(loaded, get_plugin_manager(disabled=LECTURE_DISABLED, autoload=False),
                                     self.options())
        self.full_tracer = Tracer(loaded, get_plugin_manager(disabled=FULL_DISABLED, autoload=False),
                                  self.options(), points=FULL_POINTS)
        self.generate_kwargs = dict(language="en", task="transcribe", min_new_tokens=args.tokens,
                                    max_new_tokens=args.tokens)
        gen = self.model.generation_config
        self.prompt = [gen.decoder_start_token_id] + ([gen.lang_to_id["<|en|>"], gen.task_to_id["transcribe"]]
                                                      if loaded.is_multilingual else []) + [gen.no_timestamps_token_id]
        self.eot = self.lecture_tracer.eot
        self.plain_tokens: list[int] | None = None
        self.plain_batch_tokens: list[list[int]] | None = None

    # Each arm returns (timings dict with at least "s", info dict).  The clock covers only the work.
    def arm_features(self):
        sync(self.device)
        t0 = time.perf_counter()
        features_of(self.loaded, [self.samples])
        sync(self.device)
        return {"s": time.perf_counter() - t0}, {}

    def _timed_generate(self, features) -> tuple[float, list[list[int]]]:
        """Plain generate() on ``features`` [batch, n_mels, 3000]: (seconds, generated tokens per row)."""
        sync(self.device)
        t0 = time.perf_counter()
        with torch.inference_mode(), quiet_transformers():
            out = self.model.generate(features, **self.generate_kwargs)
        sync(self.device)
        s = time.perf_counter() - t0
        return s, [generated_tokens(row, self.prompt, self.eot) for row in sequences_of(out).tolist()]

    def arm_plain(self):
        s, (tokens,) = self._timed_generate(self.features)
        self.plain_tokens = self.plain_tokens or tokens
        return {"s": s}, {"tokens": len(tokens), "bytes_captured": 0}

    def _trace_and_store(self, tracer: Tracer, keep: bool = False):
        sync(self.device)
        t0 = time.perf_counter()
        run = tracer.trace(self.clip)
        sync(self.device)
        t1 = time.perf_counter()
        trace = write_trace(tracer, run, self.store, name="bench")
        sync(self.device)
        t2 = time.perf_counter()
        info = {"tokens": len(run.windows[0].tokens), **trace_sizes(trace),
                "phases_s": {k: round(v, 4) for k, v in run.windows[0].timings.items()}}
        info["tokens_equal_plain"] = (None if self.plain_tokens is None
                                      else list(run.windows[0].tokens) == list(self.plain_tokens))
        if not keep:
            self.store.delete(trace.id)
        return {"s": t2 - t0, "decode_s": t1 - t0, "store_write_s": t2 - t1,
                **{f"phase_{k}_s": v for k, v in run.windows[0].timings.items()}}, info

    def arm_lecture(self):
        timings, info = self._trace_and_store(self.lecture_tracer)
        info["bytes_captured"] = info["tensor_record_bytes"]
        return timings, info

    def arm_full(self):
        timings, info = self._trace_and_store(self.full_tracer)
        info["bytes_captured"] = info["tensor_record_bytes"]
        return timings, info

    def arm_hf_outputs(self):
        with eager_attention(self.model):
            sync(self.device)
            t0 = time.perf_counter()
            with torch.inference_mode(), quiet_transformers():
                out = self.model.generate(self.features, output_attentions=True, output_scores=True,
                                          output_hidden_states=True, return_dict_in_generate=True,
                                          **self.generate_kwargs)
            sync(self.device)
            s = time.perf_counter() - t0
        tokens = generated_tokens(sequences_of(out)[0].tolist(), self.prompt, self.eot)
        info = {"tokens": len(tokens), "bytes_captured": tensor_bytes(out),
                "tokens_equal_plain": None if self.plain_tokens is None else tokens == self.plain_tokens,
                "attn_implementation": "eager (switched for this arm)"}
        del out
        return {"s": s}, info

    def arm_naive_hooks(self):
        captured: list[torch.Tensor] = []

        def keep(module, args, output):
            if isinstance(output, torch.Tensor):
                captured.append(output.detach().cpu())
            elif isinstance(output, (tuple, list)):
                captured.extend(t.detach().cpu() for t in output if isinstance(t, torch.Tensor))

        leaves = [m for m in self.model.modules() if not any(True for _ in m.children())]
        handles = [m.register_forward_hook(keep) for m in leaves]
        try:
            sync(self.device)
            t0 = time.perf_counter()
            with torch.inference_mode(), quiet_transformers():
                out = self.model.generate(self.features, **self.generate_kwargs)
            sync(self.device)
            s = time.perf_counter() - t0
        finally:
            for h in handles:
                h.remove()
        tokens = generated_tokens(sequences_of(out)[0].tolist(), self.prompt, self.eot)
        info = {"tokens": len(tokens), "hooked_modules": len(leaves), "tensors_captured": len(captured),
                "bytes_captured": sum(t.numel() * t.element_size() for t in captured),
                "tokens_equal_plain": None if self.plain_tokens is None else tokens == self.plain_tokens}
        if self.device.type == "cpu":
            info["note"] = ".cpu() of a CPU tensor returns the same tensor: nothing is copied on CPU"
        captured.clear()
        return {"s": s}, info

    def arm_plain_batched(self):
        s, rows = 0.0, []
        for features in self.batch_features:  # one generate() per batch, features precomputed
            seconds, batch_rows = self._timed_generate(features)
            s, rows = s + seconds, rows + batch_rows
        self.plain_batch_tokens = self.plain_batch_tokens or rows
        return {"s": s, "clips_per_s": len(rows) / s}, {"clips": len(rows), "bytes_captured": 0}

    def arm_lecture_batched(self):
        """The dataset through ``probe.runner.trace_clips``, as ``probe run --batch-size B`` runs it:
        decoding, plugins, and the store writes on the background writer thread."""
        sync(self.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            pairs = list(trace_clips(self.lecture_tracer, self.batch_clips, self.store, name="bench-batch",
                                     batch_size=self.args.batch))
        sync(self.device)
        s = time.perf_counter() - t0
        runs, traces = [run for run, _ in pairs], [trace for _, trace in pairs]
        rows = [list(run.windows[0].tokens) for run in runs]
        phases: dict[str, float] = {}
        for run in runs:
            for key, value in run.windows[0].timings.items():
                phases[key] = phases.get(key, 0.0) + value
        decode_s = sum(phases.values())
        info = {"clips": len(runs), "phases_s": {k: round(v, 4) for k, v in phases.items()},
                "bytes_captured": sum(trace_sizes(t)["tensor_record_bytes"] for t in traces),
                "tokens_equal_plain": None if self.plain_batch_tokens is None else rows == self.plain_batch_tokens}
        for trace in traces:
            self.store.delete(trace.id)
        return {"s": s, "decode_s": decode_s, "clips_per_s": len(runs) / s,
                "decode_clips_per_s": len(runs) / decode_s,
                **{f"phase_{k}_s": v for k, v in phases.items()}}, info

    def close(self):
        shutil.rmtree(self.store_dir, ignore_errors=True)


def run_arms(bench: Bench, names: list[str], repeats: int, log) -> dict:
    """Warm each arm up once, then ``repeats`` round-robin rounds (order rotated every round)."""
    results = {name: {"runs": [], "info": None, "peak_bytes": [], "peak_delta_bytes": [], "error": None}
               for name in names}

    def one(name: str, warm: bool):
        entry = results[name]
        if entry["error"]:
            return
        meter = PeakMemory(bench.device)
        try:
            with meter:
                cpu0 = time.process_time()
                timings, info = getattr(bench, f"arm_{name}")()
                timings["cpu_s"] = time.process_time() - cpu0
        except Exception as exc:  # keep the other arms' numbers; say what failed
            entry["error"] = f"{type(exc).__name__}: {exc}"
            log(f"  {name}: FAILED {entry['error']}")
            if bench.args.debug:
                traceback.print_exc()
            if bench.device.type == "cuda":
                torch.cuda.empty_cache()
            return
        if warm:
            entry["warmup"] = {k: round(v, 4) for k, v in timings.items()}
            entry["info"] = info
        else:
            entry["runs"].append(timings)
            entry["info"] = {**(entry["info"] or {}), **info}
            entry["peak_bytes"].append(meter.peak_bytes)
            entry["peak_delta_bytes"].append(meter.peak_delta_bytes)
        log(f"  {'warm-up' if warm else 'run'} {name:<16} {timings['s']:8.3f} s")

    for name in names:
        one(name, warm=True)
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            one(name, warm=False)
    return results


def summarise(results: dict, baseline: str) -> dict:
    out = {}
    for name, entry in results.items():
        runs = entry["runs"]
        summary: dict = {"error": entry["error"]} if entry["error"] else {}
        if runs:
            keys = runs[0].keys()
            for key in keys:
                values = [r[key] for r in runs if key in r]
                summary[f"median_{key}"] = round(statistics.median(values), 4)
            summary["runs_s"] = [round(r["s"], 4) for r in runs]
            summary["min_s"] = round(min(r["s"] for r in runs), 4)
            peaks = [p for p in entry["peak_bytes"] if p is not None]
            deltas = [p for p in entry["peak_delta_bytes"] if p is not None]
            summary["peak_memory_bytes"] = max(peaks) if peaks else None
            summary["peak_memory_delta_bytes"] = max(deltas) if deltas else None
        if entry.get("warmup"):
            summary["warmup"] = entry["warmup"]
        summary.update(entry["info"] or {})
        out[name] = summary
    base = out.get(baseline, {})
    for name, summary in out.items():
        if "median_s" in summary and base.get("median_s"):
            summary["ratio_to_plain"] = round(summary["median_s"] / base["median_s"], 4)
            if "median_decode_s" in summary:
                summary["decode_ratio_to_plain"] = round(summary["median_decode_s"] / base["median_s"], 4)
            summary["min_ratio_to_plain"] = round(summary["min_s"] / base["min_s"], 4)
            if summary.get("median_cpu_s") and base.get("median_cpu_s"):
                summary["cpu_ratio_to_plain"] = round(summary["median_cpu_s"] / base["median_cpu_s"], 4)
            if summary.get("peak_memory_bytes") and base.get("peak_memory_bytes"):
                summary["peak_memory_ratio_to_plain"] = round(summary["peak_memory_bytes"] / base["peak_memory_bytes"], 4)
    return out


# --------------------------------------------------------------------------- extras


def d2h_bandwidth(device: torch.device) -> dict | None:
    """Device→host copy bandwidth (bytes/s) from pinned and pageable memory, 256 MiB copies."""
    if device.type != "cuda":
        return None
    n = 256 * 2**20
    src = torch.empty(n, dtype=torch.uint8, device=device)
    result = {}
    for label, pinned in (("pinned", True), ("pageable", False)):
        dst = torch.empty(n, dtype=torch.uint8, pin_memory=pinned)
        dst.copy_(src, non_blocking=pinned)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(5):
            dst.copy_(src, non_blocking=pinned)
        torch.cuda.synchronize(device)
        result[f"{label}_bytes_per_s"] = round(5 * n / (time.perf_counter() - t0))
    return result


FIRST_VIEW_CODE = r"""
import json, sys, time
t0 = time.perf_counter()
from probe.store import Store
from probe import figures
t1 = time.perf_counter()
store, trace_id, name = sys.argv[1], sys.argv[2], sys.argv[3]
trace = Store(store, create=False).open(trace_id)
t2 = time.perf_counter()
png = figures.png_bytes(figures.FIGURES[name](trace))
t3 = time.perf_counter()
# the same again in this now-warm process: a dashboard that has drawn before opening another trace
trace = Store(store, create=False).open(trace_id)
t4 = time.perf_counter()
figures.png_bytes(figures.FIGURES[name](trace))
t5 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "draw_s": t3 - t2, "png_bytes": len(png),
                  "warm_open_s": t4 - t3, "warm_draw_s": t5 - t4}))
"""


def dashboard_first_view(bench: Bench, repeats: int, log, points=FULL_POINTS) -> dict:
    """Make the largest trace we can (every built-in plugin + ``points`` captured whole), then, in a
    fresh process each time, open it and draw one figure to PNG as the dashboard does (imports timed
    apart).  ``points=[]`` gives the trace a default ``probe run`` writes."""
    if not (ROOT / "probe" / "figures").is_dir():
        return {"skipped": "probe/figures does not exist yet"}
    import re

    from probe.errors import PluginError

    disabled: list[str] = []
    failures: list[str] = []
    while True:  # every built-in plugin; one that fails is left out (and said so) rather than no trace at all
        tracer = Tracer(bench.loaded, get_plugin_manager(disabled=disabled, autoload=False), bench.options(),
                        points=points)
        try:
            with torch.inference_mode():
                run = tracer.trace(bench.clip)
            trace = write_trace(tracer, run, bench.store, name="bench-largest")
            break
        except PluginError as exc:
            failed = re.search(r"plugin '([^']+)'", str(exc))
            if not failed or failed.group(1) in disabled:
                raise
            disabled.append(failed.group(1))
            failures.append(str(exc))
            log(f"  leaving {failed.group(1)} out of the largest trace: {exc}")
    sizes = trace_sizes(trace)
    log(f"  largest trace: {sizes['trace_disk_bytes'] / 2**20:.1f} MiB on disk, {sizes['records']} records")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = {"trace": {"plugins": "all built-ins" + (f" but {disabled}" if disabled else ""),
                     "plugin_failures": failures, "points": points, **sizes},
           "page_cache": "warm (the trace was just written)", "figures": {}}
    for name in ("waveform", "cross_attention"):
        runs = []
        for _ in range(repeats):
            proc = subprocess.run([sys.executable, "-c", FIRST_VIEW_CODE, str(bench.store_dir), trace.id, name],
                                  capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode != 0:
                out["figures"][name] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
                break
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if runs:
            first = [r["open_s"] + r["draw_s"] for r in runs]
            out["figures"][name] = {
                "median_first_view_s": round(statistics.median(first), 4),
                "median_open_s": round(statistics.median(r["open_s"] for r in runs), 4),
                "median_draw_s": round(statistics.median(r["draw_s"] for r in runs), 4),
                "median_import_s": round(statistics.median(r["import_s"] for r in runs), 4),
                "median_warm_view_s": round(statistics.median(r["warm_open_s"] + r["warm_draw_s"] for r in runs), 4),
                "runs_first_view_s": [round(v, 4) for v in first],
                "png_bytes": runs[0]["png_bytes"],
            }
            log(f"  first view {name:<16} {out['figures'][name]['median_first_view_s']:.3f} s"
                f" (+ {out['figures'][name]['median_import_s']:.2f} s imports in a cold process;"
                f" {out['figures'][name]['median_warm_view_s']:.3f} s once the process has drawn)")
    bench.store.delete(trace.id)
    done = [f["median_first_view_s"] for f in out["figures"].values() if "median_first_view_s" in f]
    out["first_view_s"] = max(done) if done else None  # fresh process, imports excluded
    warm = [f["median_warm_view_s"] for f in out["figures"].values() if "median_warm_view_s" in f]
    out["warm_view_s"] = max(warm) if warm else None  # a process that has drawn before
    return out


def profile_lecture(bench: Bench, path: Path, log, batched: bool = False) -> dict:
    """cProfile one lecture trace (or the batched dataset) + store write; write the listing to ``path``;
    summarise the time spent in probe's own functions."""
    profiler = cProfile.Profile()
    clips = bench.batch_clips if batched else [bench.clip]
    with torch.inference_mode():
        t0 = time.perf_counter()
        profiler.enable()
        pairs = list(trace_clips(bench.lecture_tracer, clips, bench.store, name="bench-profile",
                                 batch_size=bench.args.batch if batched else 1))
        profiler.disable()
        runs, traces = [run for run, _ in pairs], [trace for _, trace in pairs]
        wall = time.perf_counter() - t0
    for trace in traces:
        bench.store.delete(trace.id)
    run = runs[0]
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("cumulative").print_stats(60)
    stats.sort_stats("tottime").print_stats(40)
    path.write_text(stream.getvalue())
    rows = []
    for (filename, line, function), (cc, nc, tt, ct, callers) in stats.stats.items():
        if any(part in filename for part in ("/probe/", "/plugins/")):
            rows.append({"function": f"{Path(filename).parent.name}/{Path(filename).name}:{line}:{function}",
                         "calls": nc, "cumulative_s": round(ct, 4), "own_s": round(tt, 4)})
    rows.sort(key=lambda r: -r["cumulative_s"])
    log(f"  profile written to {path}")
    return {"listing": str(path), "clips": len(clips), "phases_s_first_clip": run.windows[0].timings,
            "wall_s_under_profiler": round(wall, 4),
            "probe_functions": rows[:40]}


# --------------------------------------------------------------------------- report


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def print_table(report: dict) -> None:
    arms = report["arms"]
    print()
    print(f"{report['model']['name']} on {report['device']['name']} ({report['dtype']}, {report['attn_implementation']},"
          f" {report['input_seconds']:.0f} s input, {report['tokens']} tokens, {report['repeats']} repeats,"
          f" {report['threads']} threads)")
    head = (f"{'arm':<18}{'median s':>10}{'× plain':>9}{'decode s':>10}{'× plain':>9}{'cpu s':>9}{'× plain':>9}"
            f"{'peak mem':>12}{'Δ peak':>12}{'captured':>12}  same tokens")
    print(head)
    print("-" * len(head))
    for name, a in arms.items():
        if "median_s" not in a:
            print(f"{name:<18}{'error: ' + str(a.get('error')):>60}")
            continue
        print(f"{name:<18}{a['median_s']:>10.3f}{a.get('ratio_to_plain', float('nan')):>9.3f}"
              f"{a.get('median_decode_s', float('nan')):>10.3f}{a.get('decode_ratio_to_plain', float('nan')):>9.3f}"
              f"{a.get('median_cpu_s', float('nan')):>9.3f}{a.get('cpu_ratio_to_plain', float('nan')):>9.3f}"
              f"{fmt_bytes(a.get('peak_memory_bytes')):>12}{fmt_bytes(a.get('peak_memory_delta_bytes')):>12}"
              f"{fmt_bytes(a.get('bytes_captured')):>12}  {a.get('tokens_equal_plain', '')}")
    batched = report.get("batched") or {}
    if batched.get("arms"):
        print()
        print(f"batched, B={batched['batch_size']}:")
        for name, a in batched["arms"].items():
            if "median_s" in a:
                print(f"  {name:<18}{a['median_s']:>9.3f} s  {a['median_clips_per_s']:.3f} clips/s"
                      f"  (cpu {a['median_cpu_s']:.3f} s, {a.get('cpu_ratio_to_plain', float('nan')):.3f}× plain)"
                      + (f"  (decode only {a['median_decode_clips_per_s']:.3f} clips/s)" if "median_decode_clips_per_s" in a else "")
                      + (f"  same tokens: {a.get('tokens_equal_plain')}" if "tokens_equal_plain" in a else ""))
            else:
                print(f"  {name:<18} error: {a.get('error')}")
        if "throughput_ratio" in batched:
            print(f"  throughput ratio lecture/plain: {batched['throughput_ratio']:.3f}"
                  f" (decode only {batched.get('decode_throughput_ratio', float('nan')):.3f})")
    dash = report.get("dashboard") or {}
    if dash.get("figures"):
        print()
        for name, f in dash["figures"].items():
            print(f"dashboard first view {name}: " + (
                f"{f['median_first_view_s']:.3f} s in a fresh process (open {f['median_open_s']:.3f} s +"
                f" draw {f['median_draw_s']:.3f} s; imports {f['median_import_s']:.2f} s more),"
                f" {f['median_warm_view_s']:.3f} s once the process has drawn" if "median_first_view_s" in f
                else f"error {f.get('error')}"))
    elif dash.get("skipped"):
        print(f"dashboard first view: skipped ({dash['skipped']})")
    print()
    for name, t in report["targets"].items():
        print(f"target {name}: {t}")


def evaluate_targets(report: dict) -> dict:
    arms, device = report["arms"], report["device"]["type"]
    plain, lecture, full = arms.get("plain", {}), arms.get("lecture", {}), arms.get("full", {})
    targets = {}
    if lecture.get("ratio_to_plain"):
        limit = TARGETS["cuda_lecture_ratio"] if device == "cuda" else TARGETS["cpu_lecture_ratio"]
        key = "cuda_lecture_ratio" if device == "cuda" else "cpu_lecture_ratio"
        targets[key] = {"limit": limit, "with_store_write": lecture["ratio_to_plain"],
                        "decode_only": lecture.get("decode_ratio_to_plain"),
                        "fastest_run_ratio": lecture.get("min_ratio_to_plain"),
                        "cpu_time_ratio": lecture.get("cpu_ratio_to_plain"),
                        "pass_with_store_write": lecture["ratio_to_plain"] <= limit,
                        "pass_cpu_time": (lecture.get("cpu_ratio_to_plain") or 99) <= limit,
                        "pass_decode_only": (lecture.get("decode_ratio_to_plain") or 99) <= limit}
        if device == "cuda" and lecture.get("peak_memory_ratio_to_plain"):
            targets["cuda_lecture_peak_memory_ratio"] = {
                "limit": TARGETS["cuda_lecture_peak_memory_ratio"], "value": lecture["peak_memory_ratio_to_plain"],
                "pass": lecture["peak_memory_ratio_to_plain"] <= TARGETS["cuda_lecture_peak_memory_ratio"]}
    if full.get("median_s") and plain.get("median_s"):
        if device == "cuda":
            bandwidth = (report.get("d2h_bandwidth") or {}).get("pinned_bytes_per_s") or PINNED_D2H_FALLBACK
            limit = plain["median_s"] + full["bytes_captured"] / (0.5 * bandwidth)
            targets["cuda_full_capture_s"] = {
                "limit_s": round(limit, 4), "formula": "plain + bytes / (0.5 × pinned D→H bandwidth)",
                "pinned_bytes_per_s": bandwidth, "with_store_write_s": full["median_s"],
                "decode_only_s": full.get("median_decode_s"), "pass_with_store_write": full["median_s"] <= limit,
                "pass_decode_only": (full.get("median_decode_s") or 1e9) <= limit}
        else:
            targets["cuda_full_capture_s"] = "n/a on CPU (the target is about device→host copies)"
    batched = report.get("batched") or {}
    if "throughput_ratio" in batched:
        targets["batched_throughput_ratio"] = {
            "limit": TARGETS["batched_throughput_ratio"], "with_store_write": batched["throughput_ratio"],
            "decode_only": batched.get("decode_throughput_ratio"),
            "cpu_time": batched.get("cpu_throughput_ratio"),
            "pass_with_store_write": batched["throughput_ratio"] >= TARGETS["batched_throughput_ratio"],
            "pass_cpu_time": (batched.get("cpu_throughput_ratio") or 0) >= TARGETS["batched_throughput_ratio"],
            "pass_decode_only": (batched.get("decode_throughput_ratio") or 0) >= TARGETS["batched_throughput_ratio"]}
    dash = report.get("dashboard") or {}
    if dash.get("first_view_s") is not None:
        targets["dashboard_first_view_s"] = {
            "limit": TARGETS["dashboard_first_view_s"], "fresh_process": dash["first_view_s"],
            "warm_process": dash.get("warm_view_s"),
            "pass_fresh_process": dash["first_view_s"] < TARGETS["dashboard_first_view_s"],
            "pass_warm_process": (dash.get("warm_view_s") or 99) < TARGETS["dashboard_first_view_s"]}
    return targets


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--model", default="base", choices=["base", "tiny", "large-v3-shape"])
    parser.add_argument("--dtype", default="auto", help="auto (float16 on CUDA, float32 on CPU) | float32 | float16 | bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64, help="decoded tokens, fixed: min_new_tokens == max_new_tokens")
    parser.add_argument("--seconds", type=float, default=30.0, help="input length (default one 30 s window)")
    parser.add_argument("--batch", type=int, default=4, help="clips per batch for the throughput arms")
    parser.add_argument("--batches", type=int, default=2,
                        help="batches in the throughput arms' dataset (--batch × --batches different inputs)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--arms", default="plain,lecture,full,hf_outputs,naive_hooks",
                        help="comma-separated subset of plain,lecture,full,hf_outputs,naive_hooks")
    parser.add_argument("--no-batched", action="store_true", help="skip the batched throughput arms")
    parser.add_argument("--no-dashboard", action="store_true", help="skip the dashboard first-view timing")
    parser.add_argument("--dashboard-trace", choices=["full", "default"], default="full",
                        help="trace for the first-view timing: built-ins + full capture, or what `probe run` writes")
    parser.add_argument("--profile", choices=["auto", "yes", "no"], default="auto",
                        help="cProfile one lecture trace (auto: when the lecture ratio misses its target)")
    parser.add_argument("--out", default=None, help="JSON report path (default benchmarks/results/<device>-<model>.json)")
    parser.add_argument("--debug", action="store_true", help="print tracebacks of failing arms")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = keep_freed_memory()  # as `probe run` does; before any arm, so plain decoding gets it too
    started = time.perf_counter()
    machine = machine_info()
    machine["malloc"] = malloc
    log(f"loading {args.model} on {args.device} ...")
    t0 = time.perf_counter()
    loaded = build_model(args.model, args.device, args.dtype)
    load_s = time.perf_counter() - t0
    device = loaded.device
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (machine["cpu_model"] or "cpu")
    log(f"  {loaded.model_id} loaded in {load_s:.1f} s ({loaded.attn_implementation}, {loaded.dtype})")
    bench = Bench(args, loaded)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if "plain" not in arms:
        arms.insert(0, "plain")
    report: dict = {
        "benchmark": "whisper-probe overhead (benchmarks/bench.py)",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "device": {"type": device.type, "name": device_name,
                   **({"cuda": torch.version.cuda,
                       "total_memory_bytes": torch.cuda.get_device_properties(device).total_memory}
                      if device.type == "cuda" else {})},
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "whisper_probe": probe.__version__, "numpy": np.__version__},
        "model": {"name": args.model, "id": loaded.model_id, "source": loaded.source, "load_s": round(load_s, 2),
                  "config": {k: getattr(loaded.model.config, k) for k in (
                      "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "num_mel_bins",
                      "vocab_size")},
                  "parameters": sum(p.numel() for p in loaded.model.parameters())},
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "attn_implementation": loaded.attn_implementation,
        "threads": torch.get_num_threads(),
        "input_seconds": round(len(bench.samples) / SAMPLE_RATE, 3),
        "input": f"examples {', '.join(EXAMPLES)} concatenated (0.3 s gaps) and tiled to {args.seconds:g} s",
        "tokens": args.tokens,
        "repeats": args.repeats,
        "timing": "median wall time of the repeats after one warm-up, arms interleaved round-robin;"
                  " cpu_s = process CPU time (all threads) of the same runs, the steadier number on a shared host"
                  + (", torch.cuda.synchronize around every clock" if device.type == "cuda" else ""),
        "arm_definitions": {
            "plain": "model.generate(input_features, language='en', task='transcribe', min_new_tokens=N,"
                     " max_new_tokens=N); features precomputed",
            "features": "log-Mel feature extraction of the 30 s input alone (inside the lecture/full arms, not plain)",
            "lecture": f"Tracer.trace + write_trace into a temp Store; plugins: all built-ins but {LECTURE_DISABLED};"
                       " decode_s = Tracer.trace only, s = with the store write",
            "full": f"activations plugin only (disabled {FULL_DISABLED}), points {FULL_POINTS}, float16,"
                    " written to the store",
            "hf_outputs": "generate(..., output_attentions=True, output_scores=True, output_hidden_states=True,"
                          " return_dict_in_generate=True) with the same weights switched to eager attention",
            "naive_hooks": "register_forward_hook on every leaf module storing output.detach().cpu() in a list,"
                           " then plain generate()",
        },
    }
    try:
        log(f"arms ({args.repeats} repeats after a warm-up): {', '.join(arms)} + features")
        results = run_arms(bench, ["features", *arms], args.repeats, log)
        report["arms"] = summarise(results, "plain")
        plain = report["arms"].get("plain", {})
        feats = report["arms"].get("features", {})
        if plain.get("median_s") and feats.get("median_s"):
            for name in ("lecture", "full"):
                a = report["arms"].get(name, {})
                if a.get("median_s"):
                    a["ratio_to_plain_with_features"] = round(a["median_s"] / (plain["median_s"] + feats["median_s"]), 4)
                    a["decode_ratio_to_plain_with_features"] = round(
                        a["median_decode_s"] / (plain["median_s"] + feats["median_s"]), 4)
        report["plain_tokens"] = bench.plain_tokens
        report["plain_text"] = loaded.processor.tokenizer.decode(
            [t for t in (bench.plain_tokens or []) if t < bench.eot]).strip()
        report["faithful"] = report["arms"].get("lecture", {}).get("tokens_equal_plain")
        report["d2h_bandwidth"] = d2h_bandwidth(device)

        if not args.no_batched and args.batch > 0:
            log(f"batched throughput, B={args.batch}")
            batched = summarise(run_arms(bench, ["plain_batched", "lecture_batched"], args.repeats, log),
                                "plain_batched")
            report["batched"] = {"batch_size": args.batch, "batches": args.batches, "arms": batched,
                                 "input": f"{args.batch * args.batches} different {args.seconds:g} s inputs"
                                          f" (example order rotated and shifted), {args.batches} batches"
                                          f" of {args.batch}"}
            pb, lb = batched.get("plain_batched", {}), batched.get("lecture_batched", {})
            if pb.get("median_clips_per_s") and lb.get("median_clips_per_s"):
                report["batched"]["throughput_ratio"] = round(lb["median_clips_per_s"] / pb["median_clips_per_s"], 4)
                report["batched"]["decode_throughput_ratio"] = round(
                    lb["median_decode_clips_per_s"] / pb["median_clips_per_s"], 4)
                if lb.get("median_cpu_s") and pb.get("median_cpu_s"):
                    report["batched"]["cpu_throughput_ratio"] = round(pb["median_cpu_s"] / lb["median_cpu_s"], 4)
                single = report["arms"].get("plain", {}).get("median_s")
                if single:
                    report["batched"]["plain_batching_speedup"] = round(pb["median_clips_per_s"] * single, 4)

        if not args.no_dashboard:
            log("dashboard first view")
            try:
                points = FULL_POINTS if args.dashboard_trace == "full" else []
                report["dashboard"] = dashboard_first_view(bench, max(1, min(args.repeats, 3)), log, points)
            except Exception as exc:
                report["dashboard"] = {"error": f"{type(exc).__name__}: {exc}"}

        report["targets"] = evaluate_targets(report)
        lecture_target = report["targets"].get("cpu_lecture_ratio") or report["targets"].get("cuda_lecture_ratio")
        missed = isinstance(lecture_target, dict) and not lecture_target["pass_with_store_write"]
        out_path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{device.type}-{args.model}.json"
        if args.profile == "yes" or (args.profile == "auto" and missed):
            log("profiling one lecture trace (cProfile)")
            report["profile"] = profile_lecture(bench, out_path.with_suffix(".profile.txt"), log)
        batched_target = report["targets"].get("batched_throughput_ratio")
        if "batched" in report and (args.profile == "yes" or (
                args.profile == "auto" and isinstance(batched_target, dict) and not batched_target["pass_with_store_write"])):
            log(f"profiling one lecture batch of {args.batch} (cProfile)")
            report["profile_batched"] = profile_lecture(bench, out_path.with_suffix(".profile-batched.txt"), log,
                                                        batched=True)
        report["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        report["wall_s"] = round(time.perf_counter() - started, 1)
    finally:
        bench.close()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

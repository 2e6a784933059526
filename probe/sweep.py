"""Sweeps: one intervention family run over many components of the model, on a clip set, kept
as a table in the store.

A sweep (``probe sweep``, :func:`run_sweep`) names a **family** (:class:`SweepSpec`):

- ``heads``: ablate each head of one attention kind (``decoder.self_attn``, ``decoder.cross_attn``,
  ``encoder.self_attn``) in turn — one cell per (layer, head), zeroed or held at its mean over
  reference traces (``mean_of``);
- ``layers``: ablate every head of one layer of that kind at a time — one cell per layer;
- ``local``: encoder self-attention limited to ±k frames, for each ``k``: in every layer together
  (layer ``all``) and, with ``per_layer``, in each layer alone (Reid's local-attention experiment).

and a **clip set** (files, a dataset, or a clips JSON file giving each clip's reference ``text``
and ``group`` such as ``speech``/``nonspeech``).  Every clip is decoded clean first, then once per
**cell**, ``batch_size`` clips per ``generate()`` call, with the same decoding options, and one
row per (cell, clip) is kept:

- ``transcript``; ``tokens``: text tokens emitted (what a hallucination on non-speech is made
  of); ``words``;
- ``wer``: error rate against the clip's clean transcript (:mod:`probe.metrics`; CER for zh/ja/ko…;
  None when the clean transcript is empty), ``ref_wer`` against its reference text when given;
- ``delta_logprob``: the change in log-probability of the clean transcript when teacher-forced
  through the intervened model (Σ over its ``clean_tokens`` tokens; exactly 0 for a cell that
  changes nothing).

Where it lives: ``<store>/sweeps/<sweep id>/`` — ``sweep.json`` (what was swept, on which clips,
with which model and decoding options), ``clean.json`` (each clip's clean windows and
log-probabilities), ``rows.jsonl`` (appended one cell at a time; a line cut short by a crash is
ignored).  The id is a hash of what ``sweep.json`` says, so running the same sweep again resumes
it: cells already in ``rows.jsonl`` are skipped.  A lock keeps two processes off one sweep.

Speed: a cell that leaves the encoder alone reuses each batch's clean encoder output
(:class:`EncoderCache`), so a sweep over decoder heads costs decoder passes only; a cell that
changes the encoder runs it once per clip, its teacher-forced passes reusing what decoding made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from probe.errors import OptionError, StoreError

FAMILIES = ("heads", "layers", "local")
SWEEPS_DIR = "sweeps"  # inside the store; never listed as a trace
CLEAN = "clean"  # the cell without an intervention
LOCAL_K = (5, 10, 20, 40, 75)  # Reid's k values (frames of 20 ms either side)
# metric → (what the heatmap's colour bar says, larger is worse?)
METRICS = {
    "delta_logprob": ("Δ log-prob of the clean transcript per token", False),
    "wer": ("error rate vs the clean transcript (mean per clip)", True),
    "ref_wer": ("error rate vs the reference text (mean per clip)", True),
    "ref_wer_change": ("error rate vs the reference (mean per clip), change from clean", True),
    "tokens": ("text tokens emitted per clip", True),
    "tokens_change": ("text tokens emitted per clip, change from clean", True),
}


# --------------------------------------------------------------------------- what is swept


@dataclass(frozen=True)
class SweepSpec:
    """One intervention family over components (see the module docstring)."""

    family: str
    attention: str | None = None  # heads, layers: an attention kind of probe.interventions.ATTENTION
    layers: tuple[int, ...] | None = None  # None: every layer
    heads: tuple[int, ...] | None = None  # heads family: None: every head
    k: tuple[int, ...] = LOCAL_K  # local family
    per_layer: bool = False  # local family: also each layer alone
    mean_of: tuple[str, ...] = ()  # heads, layers: mean ablation over these traces

    def to_dict(self) -> dict:
        found = {"family": self.family}
        if self.family in ("heads", "layers"):
            found.update(attention=self.attention, mean_of=list(self.mean_of))
        if self.family == "heads":
            found["heads"] = None if self.heads is None else list(self.heads)
        if self.family == "local":
            found.update(k=list(self.k), per_layer=self.per_layer)
        found["layers"] = None if self.layers is None else list(self.layers)
        return found


@dataclass(frozen=True)
class Cell:
    """One component intervened: ``key`` names it in the table (``L3.H5``, ``L2``, ``k20.all``)."""

    key: str
    labels: dict
    interventions: tuple[dict, ...] = ()


def cells(spec: SweepSpec, config) -> list[Cell]:
    """Every cell of ``spec`` on a model with this config, the clean cell first; a kind, layer,
    head or k out of range is a one-line :class:`OptionError`."""
    from probe.interventions import ATTENTION

    if spec.family not in FAMILIES:
        raise OptionError(f"sweep family {spec.family!r}: use one of {', '.join(FAMILIES)}")
    found = [Cell(CLEAN, {})]
    if spec.family == "local":
        layer_count = int(config.encoder_layers)
        layers = _in_range(spec.layers, layer_count, "encoder layer")
        if not spec.k or any(k < 0 for k in spec.k):
            raise OptionError("sweep local: give k as whole numbers ≥ 0 (frames either side), e.g. --k 5,10,20,40,75")
        for k in dict.fromkeys(spec.k):
            found.append(Cell(f"k{k}.all", {"k": k, "layer": "all"},
                              ({"kind": "local", "k": k, "layers": None if spec.layers is None else list(layers)},)))
            if spec.per_layer:
                found += [Cell(f"k{k}.L{layer}", {"k": k, "layer": layer},
                               ({"kind": "local", "k": k, "layers": [layer]},)) for layer in layers]
        return found
    if spec.attention not in ATTENTION:
        raise OptionError(f"sweep {spec.family}: --attention {spec.attention!r} is not an attention kind; use "
                          f"{', '.join(ATTENTION)}")
    _, heads_key, layers_key = ATTENTION[spec.attention]
    layers = _in_range(spec.layers, int(getattr(config, layers_key)), "layer")
    head_count = int(getattr(config, heads_key))
    mean = {"mean_of": list(spec.mean_of)} if spec.mean_of else {}
    if spec.family == "layers":
        return found + [Cell(f"L{layer}", {"layer": layer}, ({"kind": "ablate", "attention": spec.attention,
                                                              "layer": layer, "heads": list(range(head_count)), **mean},))
                        for layer in layers]
    heads = _in_range(spec.heads, head_count, "head")
    return found + [Cell(f"L{layer}.H{head}", {"layer": layer, "head": head},
                         ({"kind": "ablate", "attention": spec.attention, "layer": layer, "heads": [head], **mean},))
                    for layer in layers for head in heads]


def _in_range(chosen: tuple[int, ...] | None, count: int, what: str) -> list[int]:
    if chosen is None:
        return list(range(count))
    wrong = [n for n in chosen if not 0 <= n < count]
    if wrong or not chosen:
        raise OptionError(f"sweep: {what} {wrong[0] if wrong else '(none)'} is out of range; this model has "
                          f"{count} ({what}s 0–{count - 1})")
    return list(dict.fromkeys(chosen))


# --------------------------------------------------------------------------- the clip set


@dataclass(frozen=True)
class SweepClip:
    """A clip of the set: its audio, and what the clips file says of it."""

    clip: Any  # probe.audio.AudioClip
    text: str | None = None  # reference transcript
    group: str | None = None  # e.g. "speech", "nonspeech"
    language: str | None = None  # for the error rate's normaliser (else the detected language)

    def to_dict(self) -> dict:
        return {"source": self.clip.source, "sha256": self.clip.sha256, "channel": self.clip.channel,
                "duration": round(self.clip.duration, 3), "text": self.text, "group": self.group,
                "language": self.language}


def clips_from_file(path: str | os.PathLike) -> list[SweepClip]:
    """The clips a JSON file lists: ``[{"file": ..., "text": ..., "group": ..., "language": ...}]``
    (files relative to the JSON file; ``examples/clips.json`` is one)."""
    from probe.audio import existing_file, load_audio

    where = Path(path).expanduser()
    try:
        items = json.loads(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OptionError(f"--clips {path}: no such file; give a JSON list of {{\"file\", \"text\", \"group\"}}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OptionError(f"--clips {path}: not a readable JSON list ({err})") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("file"), str) for i in items):
        raise OptionError(f"--clips {path}: give a JSON list of objects, each with a \"file\" (and \"text\", \"group\")")
    found = []
    for number, item in enumerate(items, start=1):
        wrong = [key for key in ("text", "group", "language") if not isinstance(item.get(key), (str, type(None)))]
        if wrong:
            raise OptionError(f"--clips {path}: clip {number}'s {wrong[0]!r} must be text (or left out)")
        file = existing_file(str(where.parent / item["file"]))
        found.append(SweepClip(load_audio(file), item.get("text"), item.get("group"), item.get("language")))
    return found


# --------------------------------------------------------------------------- reusing the encoder


class EncoderCache:
    """The encoder's outputs kept by their input features (a hash of the log-Mel's bytes), so a
    cell that leaves the encoder alone does not run it again; at most ``budget`` bytes, the least
    recently used going first.  While :meth:`reused` is active the encoder module's ``forward`` is
    this cache's (its hooks still run: the module is called as before)."""

    def __init__(self, budget: int = 2 * 2**30):
        self.budget = budget
        self.entries: OrderedDict[str, Any] = OrderedDict()
        self.bytes = 0
        self.hits = 0

    @staticmethod
    def key(features: torch.Tensor) -> str:
        digest = hashlib.blake2b(features.detach().cpu().contiguous().numpy().tobytes(), digest_size=16)
        return f"{tuple(features.shape)}{features.dtype}{digest.hexdigest()}"

    @contextlib.contextmanager
    def reused(self, encoder: torch.nn.Module, active: bool = True) -> Iterator[None]:
        if not active:
            yield
            return
        original = encoder.forward
        had = encoder.__dict__.get("forward")  # an instance forward already there (a user's patch, accelerate)

        def forward(input_features, *args, **kwargs):
            wants_more = args or kwargs.get("output_attentions") or kwargs.get("output_hidden_states") \
                or kwargs.get("return_dict") is False
            if wants_more:
                return original(input_features, *args, **kwargs)
            key = f"{id(encoder)}:{self.key(input_features)}"
            if key in self.entries:
                self.entries.move_to_end(key)
                self.hits += 1
                kept = self.entries[key]
                return type(kept)(**kept)  # a new output object: generate() may rebind its fields
            out = original(input_features, *args, **kwargs)
            self._keep(key, out, input_features)
            return out

        encoder.forward = forward
        try:
            yield
        finally:
            if had is None:
                del encoder.forward  # the class's forward again
            else:
                encoder.forward = had

    def _keep(self, key: str, out, features: torch.Tensor | None = None) -> None:
        """Keep ``out``; for a batch, each row too under its own features' key (the teacher-forced
        passes run one window at a time on the same log-Mel rows)."""
        hidden = out.last_hidden_state  # [batch, frame, d_model]
        size = hidden.numel() * hidden.element_size()
        if size > self.budget:
            return
        if features is not None and hidden.shape[0] > 1:
            for row in range(hidden.shape[0]):
                self._keep(f"{key.split(':', 1)[0]}:{self.key(features[row:row + 1])}",
                           type(out)(last_hidden_state=hidden[row:row + 1]))
        if key in self.entries:
            self.bytes -= self._size(self.entries.pop(key))
        self.entries[key] = type(out)(**out)
        self.bytes += size
        while self.bytes > self.budget and self.entries:
            self.bytes -= self._size(self.entries.popitem(last=False)[1])

    @staticmethod
    def _size(out) -> int:
        return out.last_hidden_state.numel() * out.last_hidden_state.element_size()


# --------------------------------------------------------------------------- one sweep on disk


class Sweep:
    """A sweep folder of the store: its description, clean windows and rows (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if any((self.path / name).is_symlink() for name in ("sweep.json", "clean.json", "rows.jsonl")):
            raise StoreError(f"sweep {self.path.name}: its files are links; a sweep is read from its own folder only")
        try:
            self.manifest = json.loads((self.path / "sweep.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StoreError(f"sweep {self.path.name}: cannot read its sweep.json ({err}); run the sweep again") from None

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def spec(self) -> dict:
        return self.manifest["spec"]

    @property
    def cells(self) -> list[dict]:
        return self.manifest["cells"]

    @property
    def clips(self) -> list[dict]:
        return self.manifest["clips"]

    def rows(self) -> list[dict]:
        """Every whole line of ``rows.jsonl`` (the last one of a (cell, clip) wins)."""
        found: dict[tuple[str, int], dict] = {}
        try:
            lines = (self.path / "rows.jsonl").read_bytes().split(b"\n")
        except FileNotFoundError:
            return []
        except OSError as err:
            raise StoreError(f"sweep {self.id}: cannot read rows.jsonl ({err.strerror or err})") from None
        for line in lines:
            try:
                row = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue  # cut short by a crash (maybe inside a character): that cell runs again
            if isinstance(row, dict) and "cell" in row and "clip" in row:
                found[(row["cell"], row["clip"])] = row
        return list(found.values())

    def done(self) -> set[str]:
        """Cells with a row for every clip."""
        clips = len(self.clips)
        count: dict[str, int] = {}
        for row in self.rows():
            count[row["cell"]] = count.get(row["cell"], 0) + 1
        return {cell for cell, n in count.items() if n >= clips}

    def groups(self) -> list[str]:
        return sorted({clip.get("group") for clip in self.clips if clip.get("group")})

    def table(self, group: str | None = None) -> list[dict]:
        """One row per cell done: its labels and each metric over the clips (of ``group``, if given):
        mean error rates and tokens per clip, Δ log-prob per clean token, and changes from clean."""
        chosen = {i for i, clip in enumerate(self.clips) if group is None or clip.get("group") == group}
        if group is not None and not chosen:
            raise OptionError(f"sweep {self.id} has no clips in group {group!r}; its groups: "
                              f"{', '.join(self.groups()) or '(none)'}")
        by_cell: dict[str, list[dict]] = {}
        for row in self.rows():
            if row["clip"] in chosen:
                by_cell.setdefault(row["cell"], []).append(row)
        table = []
        for cell in self.cells:
            rows = by_cell.get(cell["key"])
            if not rows or len(rows) < len(chosen):
                continue
            table.append({"cell": cell["key"], **cell["labels"], "clips": len(rows), **_aggregate(rows)})
        clean = next((row for row in table if row["cell"] == CLEAN), None)
        for row in table:
            for metric in ("ref_wer", "tokens"):
                before = None if clean is None else clean.get(metric)
                row[f"{metric}_change"] = None if row.get(metric) is None or before is None else \
                    round(row[metric] - before, 6)
        return table

    def matrix(self, metric: str, group: str | None = None) -> tuple[list[str], list[str], np.ndarray]:
        """The heatmap of ``metric``: (row labels, column labels, values [row, column], NaN where a
        cell is not done) — layer × head for ``heads``, layer × "all heads" for ``layers``, and
        layer ("all" first) × k for ``local``."""
        if metric not in METRICS:
            raise OptionError(f"sweep metric {metric!r}: use one of {', '.join(METRICS)}")
        table = {row["cell"]: row for row in self.table(group)}
        keyed = [cell for cell in self.cells if cell["key"] != CLEAN]
        family = self.spec["family"]
        if family == "local":
            rows = list(dict.fromkeys(str(c["labels"]["layer"]) for c in keyed))
            columns = list(dict.fromkeys(str(c["labels"]["k"]) for c in keyed))
            where = {c["key"]: (rows.index(str(c["labels"]["layer"])), columns.index(str(c["labels"]["k"])))
                     for c in keyed}
        else:
            rows = list(dict.fromkeys(str(c["labels"]["layer"]) for c in keyed))
            columns = (list(dict.fromkeys(str(c["labels"]["head"]) for c in keyed)) if family == "heads"
                       else ["all heads"])
            where = {c["key"]: (rows.index(str(c["labels"]["layer"])),
                                columns.index(str(c["labels"]["head"])) if family == "heads" else 0) for c in keyed}
        values = np.full((len(rows), len(columns)), np.nan)
        for key, (r, c) in where.items():
            value = table.get(key, {}).get(metric)
            if value is not None:
                values[r, c] = value
        return rows, columns, values

    def clean_value(self, metric: str, group: str | None = None):
        row = next((row for row in self.table(group) if row["cell"] == CLEAN), None)
        return None if row is None else row.get(metric)


def _aggregate(rows: list[dict]) -> dict:
    def mean(key):
        values = [row[key] for row in rows if row.get(key) is not None]
        return round(float(np.mean(values)), 6) if values else None

    tokens = sum(row.get("clean_tokens", 0) for row in rows)
    return {"wer": mean("wer"), "ref_wer": mean("ref_wer"), "tokens": mean("tokens"), "words": mean("words"),
            "delta_logprob": round(sum(row.get("delta_logprob", 0.0) for row in rows) / tokens, 6) if tokens else None,
            "seconds": round(sum(row.get("seconds", 0.0) for row in rows), 4)}


def sweeps_dir(store) -> Path:
    return Path(store.path) / SWEEPS_DIR


def list_sweeps(store) -> list[Sweep]:
    """The store's sweeps, newest first."""
    folder = sweeps_dir(store)
    if folder.is_symlink() or not folder.is_dir():
        return []  # a linked sweeps folder could lead outside the store
    found = []
    for entry in folder.iterdir():
        with contextlib.suppress(StoreError, OSError):
            if entry.is_dir() and not entry.is_symlink() and (entry / "sweep.json").is_file():
                found.append((entry.lstat().st_mtime, Sweep(entry)))
    return [sweep for _, sweep in sorted(found, key=lambda pair: pair[0], reverse=True)]


def open_sweep(store, ref: str) -> Sweep:
    """The sweep ``ref`` names: its id or a unique prefix of it."""
    folder = sweeps_dir(store)
    names = [s.id for s in list_sweeps(store)]
    if ref in names:
        return Sweep(folder / ref)
    matches = [name for name in names if name.startswith(ref)]
    if len(matches) == 1:
        return Sweep(folder / matches[0])
    what = "matches several sweeps" if matches else "is no sweep"
    raise StoreError(f"{ref!r} {what} in store {store.path}; its sweeps: {', '.join(names) or '(none)'}")


# --------------------------------------------------------------------------- running one


@dataclass
class Progress:
    """What :func:`run_sweep` reports as it goes (``probe sweep`` prints it)."""

    cells: int
    done_before: int
    done: int = 0
    seconds: float = 0.0
    log: Callable[[str], None] = field(default=lambda line: None)


def sweep_id(description: dict, name: str) -> str:
    digest = hashlib.sha256(json.dumps(description, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)[:60] or "sweep"
    return f"{safe}-{digest[:10]}"


def run_sweep(loaded, spec: SweepSpec, clips: list[SweepClip], store, options, name: str | None = None,
              batch_size: int = 4, log: Callable[[str], None] | None = None, reuse_encoder: bool = True,
              ray=None) -> Sweep:
    """Run (or resume) ``spec`` over ``clips`` with ``loaded``'s model and decoding ``options``
    into ``store``; returns the :class:`Sweep` with every cell done.

    ``ray``: a :class:`RayCells` to decode the cells on Ray Data's actor pool instead of here
    (the clean decoding and the rows file stay with this process)."""
    from probe.interventions import in_store, resolve, touches_encoder
    from probe.malloc import keep_freed_memory

    keep_freed_memory()
    if not clips:
        raise OptionError("sweep: no clips; give audio files, --clips FILE or --dataset DIR")
    options = dataclasses.replace(options)  # checked (and normalised: language codes) before it names the sweep
    options.validate(loaded)
    all_cells = cells(spec, loaded.model.config)
    # every cell's interventions checked up front: a bad mean_of reference fails before any decoding
    checked = {cell.key: resolve(loaded.model.config, in_store(cell.interventions, store.path), loaded.model_id)
               for cell in all_cells}
    description = {"spec": spec.to_dict(), "model": loaded.model_id, "decode": options.to_dict(),
                   "numerics": {"dtype": str(loaded.dtype).removeprefix("torch."), "device": loaded.device.type,
                                "attention": loaded.attn_implementation},
                   "clips": [clip.to_dict() for clip in clips]}
    name = name or f"{spec.family}-{spec.attention or 'encoder'}".replace(".", "-")
    folder = sweeps_dir(store) / sweep_id(description, name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot write sweep {folder} ({err.strerror or err}); pick another --store") from None
    with _locked(folder):
        manifest = {**description, "name": name, "probe_version": _version(),
                    "cells": [{"key": c.key, "labels": c.labels, "interventions": list(c.interventions)}
                              for c in all_cells]}
        sweep_json = folder / "sweep.json"
        if not sweep_json.exists():
            _write_json(sweep_json, {**manifest, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        sweep = Sweep(folder)
        done = sweep.done()
        progress = Progress(len(all_cells), len(done), log=log or (lambda line: None))
        if done:
            progress.log(f"resuming sweep {sweep.id}: {len(done)} of {len(all_cells)} cells done")
        runner = _CellRunner(loaded, clips, options, batch_size, reuse_encoder)
        clean = _read_clean(folder)
        if clean is None:
            clean = runner.clean()
            _write_json(folder / "clean.json", clean)
        runner.use_clean(clean)
        started = time.perf_counter()
        todo = [(cell, checked[cell.key], touches_encoder(checked[cell.key], loaded.model.config))
                for cell in all_cells if cell.key not in done]
        if ray is None:
            finished = ((cell, runner.run(cell, interventions, changed)) for cell, interventions, changed in todo)
        else:
            from probe.dataset_runs.ray_engine import sweep_cells_on_ray

            finished = sweep_cells_on_ray(ray.setup(options), todo, clips, options, batch_size, reuse_encoder, clean,
                                          workers=ray.workers, gpus_per_worker=ray.gpus_per_worker,
                                          address=ray.address)
        for cell, rows in finished:
            _append_rows(folder / "rows.jsonl", rows)
            progress.done += 1
            progress.seconds = time.perf_counter() - started
            progress.log(f"[{progress.done_before + progress.done}/{progress.cells}] {cell.key}: "
                         f"{_row_summary(rows)} ({progress.seconds:.0f} s)")
        meta = json.loads(sweep_json.read_text(encoding="utf-8"))
        meta.setdefault("runs", []).append({"cells": progress.done, "seconds": round(time.perf_counter() - started, 3),
                                            "encoder_reused": runner.cache.hits, "batch_size": batch_size})
        _write_json(sweep_json, meta)
    return Sweep(folder)


@dataclass(frozen=True)
class RayCells:
    """Where ``probe sweep --engine ray`` decodes its cells: ``workers`` actors, each loading
    ``model`` (as given: spec, device, dtype) once, ``gpus_per_worker`` GPUs each, on the Ray cluster
    at ``address`` (None: a local one)."""

    model: Any
    device: str = "auto"
    dtype: str = "auto"
    workers: int = 1
    gpus_per_worker: float = 0.0
    address: str | None = None

    def setup(self, options):
        from probe.dataset_runs.setup import TracerSetup

        return TracerSetup(self.model, options, self.device, self.dtype)


def _row_summary(rows: list[dict]) -> str:
    wer = [row["wer"] for row in rows if row.get("wer") is not None]
    tokens = sum(row["tokens"] for row in rows)
    delta = sum(row["delta_logprob"] for row in rows)
    return (f"WER vs clean {np.mean(wer):.1%}, " if wer else "") + f"{tokens} tokens, Δ log-prob {delta:+.2f}"


class _CellRunner:
    """Decodes the clip set for one cell and measures each clip against its clean windows."""

    def __init__(self, loaded, clips: list[SweepClip], options, batch_size: int, reuse_encoder: bool):
        from probe.plugin_manager import get_plugin_manager

        self.loaded, self.clips, self.options, self.batch_size = loaded, clips, options, batch_size
        # tokens only: no records, and no installed plugin's interventions beside the cell's own
        self.pm = get_plugin_manager(plugins=[], disabled=_all_plugins(), autoload=False)
        self.cache = EncoderCache()
        self.reuse_encoder = reuse_encoder
        self.clean_windows: list[list[dict]] = []
        self._cell_cache: EncoderCache | None = None
        self._features: dict[int, tuple] = {}  # clip number → its log-Mel (and mask), made once
        self._clean_decoded: tuple | None = None  # clean()'s (tracer, runs, seconds), for the clean cell's rows

    def decode(self, interventions: list, encoder_changed: bool) -> list:
        """(tracer, runs) of the clip set decoded with ``interventions``."""
        from probe.tracer import Tracer

        tracer = Tracer(self.loaded, self.pm, self.options, interventions=interventions)
        runs = []
        with self.cache_for(encoder_changed).reused(self.loaded.model.model.encoder, self.reuse_encoder):
            for run in tracer.trace_many((c.clip for c in self.clips), batch_size=self.batch_size):
                run.spill.remove()
                runs.append(run)
        return tracer, runs

    def clean(self) -> list[dict]:
        """Each clip's clean transcript and windows, with every window's teacher-forced log-probs."""
        started = time.perf_counter()
        tracer, runs = self.decode([], False)
        self._clean_decoded = (tracer, runs, time.perf_counter() - started)
        found = []
        for number, (clip, run) in enumerate(zip(self.clips, runs)):
            windows = [{"index": w.index, "seek": w.seek, "prompt": list(w.prompt), "tokens": list(w.tokens),
                        "kept": 0 if w.skipped else int(w.kept), "language": w.language} for w in run.windows]
            features = self.features(tracer, number)
            for window in windows:
                window["logprobs"] = self._teacher_forced(tracer, features, window, [], False)
            found.append({"source": clip.clip.source, "transcript": run.transcript, "sequence": run.sequence,
                          "language": run.windows[0].language, "windows": windows})
        return found

    def features(self, tracer, number: int) -> tuple:
        """Clip ``number``'s log-Mel features [1, n_mels, mel_frame] and mask, computed once."""
        if number not in self._features:
            self._features[number] = tracer.features([self.clips[number].clip])
        return self._features[number]

    def use_clean(self, clean: list[dict]) -> None:
        self.clean_windows = clean

    def cache_for(self, encoder_changed: bool) -> EncoderCache:
        """The clean encoder outputs, or — for a cell that changes the encoder — this cell's own
        (its decoding and teacher-forced passes share them; the next cell starts afresh)."""
        if not encoder_changed:
            return self.cache
        if self._cell_cache is None:
            self._cell_cache = EncoderCache()
        return self._cell_cache

    def run(self, cell: Cell, interventions: list, encoder_changed: bool) -> list[dict]:
        from probe.metrics import error_rates, normalize

        started = time.perf_counter()
        self._cell_cache = None
        if cell.key == CLEAN and self._clean_decoded is not None:  # decoded already by clean()
            (tracer, runs, decoded), self._clean_decoded = self._clean_decoded, None
        else:
            tracer, runs = self.decode(interventions, encoder_changed)
            decoded = time.perf_counter() - started
        eot = int(tracer.loaded.processor.tokenizer.eos_token_id)
        rows = []
        for number, (clip, run, clean) in enumerate(zip(self.clips, runs, self.clean_windows)):
            clip_started = time.perf_counter()
            language = clip.language or clean["language"]
            features = self.features(tracer, number)
            delta, counted = 0.0, 0
            for window in clean["windows"]:
                kept = window["kept"]
                if not kept:
                    continue
                # the tracer's own interventions: prepared (a mean ablation's means) as decoding used them
                after = (window["logprobs"] if cell.key == CLEAN else
                         self._teacher_forced(tracer, features, window, tracer.interventions, encoder_changed))
                delta += float(sum(a - b for a, b in zip(after[:kept], window["logprobs"][:kept])))
                counted += kept
            transcript = run.transcript
            wer = (error_rates(clean["transcript"], transcript, language).to_dict() if clean["transcript"].strip()
                   else None)
            ref = error_rates(clip.text, transcript, language).to_dict() if clip.text is not None else None
            rows.append({"cell": cell.key, "clip": number, "transcript": transcript,
                         "tokens": sum(1 for t in run.sequence if t < eot),
                         "words": len(normalize(transcript, language).split()),
                         "wer": None if wer is None else wer[wer["headline"]],
                         "ref_wer": None if ref is None else ref[ref["headline"]],
                         "delta_logprob": round(delta, 6), "clean_tokens": counted,
                         "seconds": round(decoded / len(runs) + time.perf_counter() - clip_started, 4)})
        return rows

    def _teacher_forced(self, tracer, features, window: dict, interventions: list, encoder_changed: bool) -> list[float]:
        """Log-probs of ``window``'s tokens teacher-forced through the model (with ``interventions``)."""
        from probe import hooks as hooks_mod
        from probe import interventions as interventions_mod
        from probe.effect import window_segment

        model = self.loaded.model
        segment = window_segment(model, *features, int(window["seek"]))  # [1, n_mels, 3000]
        seek = int(window["seek"])
        with torch.inference_mode(), hooks_mod.Hooks(model) as hooks, \
                self.cache_for(encoder_changed).reused(model.model.encoder, self.reuse_encoder):
            interventions_mod.apply(hooks, model, interventions, seeks=lambda: [seek])
            encoded = model.model.encoder(segment).last_hidden_state  # [1, frame, d_model]
            ids = torch.tensor([window["prompt"] + window["tokens"]], device=encoded.device)  # [1, query]
            hidden = model.model.decoder(input_ids=ids, encoder_hidden_states=encoded).last_hidden_state
            return tracer.emitted_logprobs(hidden[0], len(window["prompt"]), window["tokens"])


def _all_plugins() -> list[str]:
    from probe.plugin_manager import DEFAULT_PLUGINS

    return list(DEFAULT_PLUGINS)


def _read_clean(folder: Path) -> list[dict] | None:
    try:
        return json.loads((folder / "clean.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data) -> None:
    """Written whole or not at all (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write {path} ({err.strerror or err}); free some space or pick another --store") from None


def _append_rows(path: Path, rows: list[dict]) -> None:
    """One cell's rows appended as whole lines, flushed to disk before the next cell starts."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    try:
        with open(path, "a+b") as ends:  # a line a crash cut short is ended, not continued
            size = ends.seek(0, os.SEEK_END)
            if size and os.pread(ends.fileno(), 1, size - 1) != b"\n":
                text = "\n" + text
        with open(path, "a", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
    except OSError as err:
        raise StoreError(f"cannot write {path} ({err.strerror or err}); free some space and run the same sweep "
                         "again to resume it") from None


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"sweep {folder.name} is being run by another process; wait for it (or stop it) "
                             "and run again to resume") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _version() -> str:
    from probe import __version__

    return __version__


def spec_from_args(family: str, attention: str | None = None, layers: Iterable[int] | None = None,
                   heads: Iterable[int] | None = None, k: Iterable[int] | None = None, per_layer: bool = False,
                   mean_of: Iterable[str] = ()) -> SweepSpec:
    """A :class:`SweepSpec` from loose values (the CLI's, or Python's), with the family's defaults."""
    if family in ("heads", "layers") and attention is None:
        attention = "decoder.self_attn"
    return SweepSpec(family, attention if family != "local" else None,
                     None if layers is None else tuple(layers), None if heads is None else tuple(heads),
                     tuple(k) if k is not None else LOCAL_K, per_layer, tuple(mean_of))


__all__ = ["Sweep", "SweepSpec", "SweepClip", "Cell", "EncoderCache", "cells", "run_sweep", "list_sweeps",
           "open_sweep", "clips_from_file", "spec_from_args", "FAMILIES", "METRICS"]

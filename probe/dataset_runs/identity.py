"""What makes two dataset runs the same run, and each row's deterministic trace id.

A row's trace id is ``<dataset>-<split>-<row key>-<16 hex>``, the hex a SHA-256 of the run's
identity (dataset, config, split, audio and text columns, model spec, device and dtype as asked,
decode options, plugins and their versions, hook points, plugin options, interventions) and the
row's key (its ``--key-column`` value, else its position).  The same command over the same rows
gives the same ids, so a rerun finds what is already traced; any change to what a trace would hold
gives other ids, so two different runs into one store never collide.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass


def _slug(text: str, length: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:length].strip("-")


@dataclass(frozen=True)
class RunIdentity:
    """The identity of one dataset run (see the module docstring); ``digest`` hashes all of it."""

    dataset: str  # DatasetSpec.label: absolute path or Hub name, with its config
    split: str
    fields: str  # canonical JSON of everything else that shapes a trace

    @classmethod
    def of(cls, spec, model: str, device: str, dtype: str, options: dict, plugins: dict, points: list,
           plugin_options: dict, interventions: list) -> "RunIdentity":
        fields = {"audio_column": spec.audio_column, "text_column": spec.text_column, "key_column": spec.key_column,
                  "model": model, "device": device, "dtype": dtype, "options": options, "plugins": plugins,
                  "points": sorted(points), "plugin_options": plugin_options, "interventions": interventions}
        return cls(spec.label, spec.split, json.dumps(fields, sort_keys=True, default=str))

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.dataset}\0{self.split}\0{self.fields}".encode()).hexdigest()

    def trace_id(self, key: str) -> str:
        """The trace id of the row whose key is ``key``."""
        row_hash = hashlib.sha256(f"{self.digest}\0{key}".encode()).hexdigest()[:16]
        name = self.dataset.rstrip("/").replace(":", "/").split("/")[-1]
        parts = [_slug(name, 24), _slug(self.split, 12), _slug(key, 24), row_hash]
        return "-".join(part for part in parts if part)

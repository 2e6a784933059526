"""Converting Whisper checkpoints from other formats into a normal Hugging Face directory.

The toolkit accepts CTranslate2 / faster-whisper directories (``model.bin`` + ``config.json`` +
``tokenizer.json``, possibly with ``model.bin`` split into parts), openai-whisper ``.pt``
checkpoints, and Hugging Face directories (re-saved as they are); :func:`convert` takes any of
them.  A conversion writes a transformers directory that loads like a hub checkpoint, staged
beside the destination and renamed into place, so a failed conversion leaves nothing behind.
The formats are described in ``ENVIRONMENT.md``; nothing here unpickles code.  The parts:

- :mod:`probe.convert.detect` — which format a path holds; :func:`convert` dispatches on it.
- :mod:`probe.convert.ctranslate2` — CTranslate2 directories → transformers.
- :mod:`probe.convert.model_bin` — the parser for CTranslate2's ``model.bin``.
- :mod:`probe.convert.openai` — openai-whisper ``.pt`` checkpoints → transformers.
- :mod:`probe.convert.hf_dir` — transformers directories: read a config, re-save, write atomically.
- :mod:`probe.convert.config` — :class:`WhisperDims`, the model and generation configs.
- :mod:`probe.convert.tokenizer` — Whisper tokenizers with every special and timestamp token.
- :mod:`probe.convert.reading` — JSON files and library errors as one-line :class:`ModelError` s.

:mod:`probe.models` uses this package (and caches its conversions); the registry of embedded
weights both share lives in :mod:`probe.embedded`, so there is no import cycle.
"""

from probe.convert.config import (ENGLISH_VOCAB, MAX_INITIAL_TIMESTAMP_INDEX, MAX_TARGET_POSITIONS,
                                  MULTILINGUAL_VOCAB, V3_VOCAB, WhisperDims, default_alignment_heads,
                                  whisper_generation_config, whisper_model_config)
from probe.convert.ctranslate2 import convert_ctranslate2
from probe.convert.detect import Format, convert, detect_format
from probe.convert.hf_dir import convert_hf, read_hf_config
from probe.convert.model_bin import CT2_BINARY_VERSION, read_ctranslate2
from probe.convert.openai import convert_openai_checkpoint, openai_to_hf_name
from probe.convert.reading import first_line
from probe.convert.tokenizer import (TIMESTAMP_COUNT, _remap_token_ids, language_token_ids, special_token_ids,
                                     tokenizer_json_with_extra_language, whisper_tokenizer)

__all__ = ["CT2_BINARY_VERSION", "ENGLISH_VOCAB", "MAX_INITIAL_TIMESTAMP_INDEX", "MAX_TARGET_POSITIONS",
           "MULTILINGUAL_VOCAB", "TIMESTAMP_COUNT", "V3_VOCAB", "Format", "WhisperDims", "convert",
           "convert_ctranslate2", "convert_hf", "convert_openai_checkpoint", "default_alignment_heads",
           "detect_format", "first_line", "language_token_ids", "openai_to_hf_name", "read_ctranslate2",
           "read_hf_config", "special_token_ids", "tokenizer_json_with_extra_language", "whisper_generation_config",
           "whisper_model_config", "whisper_tokenizer",
           "_remap_token_ids"]  # the last is private: benchmarks/bench.py remaps suppress lists with it

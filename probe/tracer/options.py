"""Decode options: everything the plain ``model.generate(input_features, ...)`` call is given.

:class:`DecodeOptions` holds what a user chose (language, task, beams, temperature fallback,
prompts), checks it against the loaded model with one-line errors (:meth:`DecodeOptions.validate`)
and turns it into ``generate()``'s keyword arguments (:meth:`DecodeOptions.generate_kwargs`).
:func:`decode_options` is how ``probe run`` and :func:`probe.run` build one, with openai-whisper's
``transcribe()`` settings underneath when asked (``--openai-defaults``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from probe.errors import OptionError

TASKS = ("transcribe", "translate")
# openai-whisper's transcribe() defaults.  Its compression-ratio threshold, 2.4, is gzip over the
# text; transformers compresses token bytes with zlib, where 1.35 is the documented equivalent.
OPENAI_DEFAULTS = {"temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), "compression_ratio_threshold": 1.35,
                   "logprob_threshold": -1.0, "no_speech_threshold": 0.6, "condition_on_prev_tokens": True}


@dataclass
class DecodeOptions:
    """How to decode: everything the plain ``generate()`` call is given (see :meth:`generate_kwargs`).

    The defaults are transformers' own: greedy, no fallback, no conditioning on previous text.
    """

    language: str | None = None  # ISO code ("en", "zh") or name ("chinese"); None: generate() detects it
    task: str = "transcribe"
    timestamps: bool = False
    num_beams: int = 1
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None  # benchmarks fix the length with min == max
    temperature: float | tuple[float, ...] | None = None  # a tuple: fallback from the first to the last
    compression_ratio_threshold: float | None = None  # zlib ratio of the token bytes (transformers' measure)
    logprob_threshold: float | None = None
    no_speech_threshold: float | None = None
    condition_on_prev_tokens: bool | None = None
    initial_prompt: str | None = None  # text given as <|startofprev|> … before the first window
    prefix: str | None = None  # text forced after <|startoftranscript|><|lang|><|task|><|notimestamps|>
    multilingual: bool = False  # detect each window's language (faster-whisper's multilingual=True)
    seed: int | None = None  # torch.manual_seed before generate(), for sampled fallback attempts

    def validate(self, loaded) -> None:
        if self.task not in TASKS:
            raise OptionError(f"unknown task {self.task!r}; use --task transcribe or --task translate")
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise OptionError(f"--num-beams must be a whole number ≥ 1 (got {self.num_beams!r})")
        longest = loaded.model.config.max_target_positions - 4  # the longest prompt is 4 tokens
        for name, value in (("--max-new-tokens", self.max_new_tokens), ("--min-new-tokens", self.min_new_tokens)):
            if value is not None and not 1 <= value <= longest:
                raise OptionError(f"{name} must be between 1 and {longest} for this model (got {value})")
        for value in self.temperatures:
            if not 0.0 <= value <= 10.0:
                raise OptionError(f"--temperature values must be between 0 and 10 (got {value})")
        if self.logprob_threshold is not None and self.logprob_threshold > 0:
            raise OptionError(f"--logprob-threshold is a log-probability, ≤ 0 (got {self.logprob_threshold})")
        for name, value in (("--compression-ratio-threshold", self.compression_ratio_threshold),
                            ("--no-speech-threshold", self.no_speech_threshold)):
            if value is not None and value <= 0:
                raise OptionError(f"{name} must be positive (got {value})")
        if self.no_speech_threshold is not None and self.logprob_threshold is None:
            raise OptionError("--no-speech-threshold needs --logprob-threshold (a window is skipped only when"
                              " both say so), e.g. --logprob-threshold -1.0, or use --openai-defaults")
        if self.prefix is not None and not self.prefix.strip():
            raise OptionError("--prefix is empty; give the text the transcript should start with")
        if self.prefix and self.timestamps:
            # generate() forces a timestamp right after the prefix, which ends the window there
            raise OptionError("--prefix works without timestamps only, on clips of up to 30 s (transformers'"
                              " generate() forces a timestamp right after a prefix); drop --timestamps")
        if not loaded.is_multilingual:
            if self.multilingual:
                raise OptionError(f"{loaded.model_id} is English-only; --multilingual needs a multilingual model")
            if self.task == "translate":
                raise OptionError(f"{loaded.model_id} is English-only and cannot translate; use a multilingual "
                                  "model (e.g. --model base)")
            if self.language is not None and named_language(self.language) != "en":
                raise OptionError(f"{loaded.model_id} is English-only; drop --language or use a multilingual model")
            self.language = None
        elif self.language is not None:
            if self.multilingual:
                raise OptionError("--multilingual detects each window's language; drop --language")
            self.language = language_code(self.language, language_codes(loaded))

    @property
    def temperatures(self) -> tuple[float, ...]:
        if self.temperature is None:
            return ()
        return tuple(float(t) for t in self.temperature) if isinstance(self.temperature, (list, tuple)) \
            else (float(self.temperature),)

    def generate_kwargs(self, loaded) -> dict:
        """The keyword arguments of the plain ``model.generate(input_features, ...)`` call."""
        kwargs: dict[str, Any] = {"return_timestamps": self.timestamps, "num_beams": self.num_beams}
        if loaded.is_multilingual:
            kwargs["task"] = self.task
            if self.language is not None:
                kwargs["language"] = self.language
        for key in ("max_new_tokens", "min_new_tokens", "compression_ratio_threshold", "logprob_threshold",
                    "no_speech_threshold", "condition_on_prev_tokens"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if self.temperature is not None:
            kwargs["temperature"] = self.temperatures if len(self.temperatures) > 1 else self.temperatures[0]
        if self.initial_prompt:
            kwargs["prompt_ids"] = loaded.processor.get_prompt_ids(self.initial_prompt, return_tensors="pt").to(
                loaded.device)
        return kwargs

    def to_dict(self) -> dict:
        data = dict(self.__dict__)
        data["temperature"] = list(self.temperatures) if self.temperature is not None else None
        return data


def decode_options(openai_defaults: bool = False, **fields) -> DecodeOptions:
    """:class:`DecodeOptions` of ``fields``, on top of :data:`OPENAI_DEFAULTS` when ``openai_defaults``
    (the fields given win over those defaults)."""
    chosen = dict(OPENAI_DEFAULTS) if openai_defaults else {}
    chosen.update(fields)
    return DecodeOptions(**chosen)


def language_codes(loaded) -> dict[str, int]:
    """Language code → token id, e.g. ``{"en": 50259, ...}`` (empty for English-only models)."""
    lang_to_id = getattr(loaded.model.generation_config, "lang_to_id", None) or {}
    return {token.strip("<|>"): token_id for token, token_id in lang_to_id.items()}


def named_language(language: str) -> str | None:
    """The ISO code of ``language`` as openai-whisper's ``transcribe()`` reads it — a code (``"zh"``),
    a name (``"Chinese"``) or an alias (``"Mandarin"``, ``"Castilian"``), any case — or None.

    The names are openai-whisper's ``tokenizer.py`` table (``LANGUAGES`` and its aliases), which
    transformers ships as ``TO_LANGUAGE_CODE``.
    """
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    wanted = " ".join(str(language).split()).lower()
    return wanted if wanted in TO_LANGUAGE_CODE.values() else TO_LANGUAGE_CODE.get(wanted)


def language_code(language: str, codes: dict[str, int]) -> str:
    """An ISO code or a language name (:func:`named_language`) → the code of one of the model's
    language tokens ``codes`` (:func:`language_codes`); a one-line error, with the nearest name, if none."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    wanted = " ".join(str(language).split()).lower()
    code = wanted if wanted in codes else named_language(wanted)  # a model may have codes openai-whisper lacks
    if code in codes:
        return code
    known = sorted(set(codes) | {name for name, named in TO_LANGUAGE_CODE.items() if named in codes})
    close = difflib.get_close_matches(wanted, known, n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise OptionError(f"unknown language {language!r}; use an ISO code or a name such as "
                      f"{', '.join(sorted(codes)[:6])}, chinese, german, ... ({len(codes)} in all){hint}")

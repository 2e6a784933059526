"""What every conversion produces besides weights: Whisper's sizes and its two configs.

This module owns :class:`WhisperDims` (the sizes that define a Whisper architecture), the
``WhisperConfig`` built from them (:func:`whisper_model_config`), the ``GenerationConfig`` that
``generate()`` needs for ``language=``, ``task=``, timestamps and beam search
(:func:`whisper_generation_config`), openai-whisper's fallback alignment heads, and the vocabulary
sizes that tell English-only, multilingual and large-v3 models apart.  Every token id comes from
the tokenizer, never from a table of numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from probe.convert.tokenizer import language_token_ids, special_token_ids

# openai-whisper's vocabulary sizes: English-only, multilingual, and large-v3's (adds <|yue|>).
ENGLISH_VOCAB, MULTILINGUAL_VOCAB, V3_VOCAB = 51864, 51865, 51866
MAX_TARGET_POSITIONS = 448
MAX_INITIAL_TIMESTAMP_INDEX = 50  # openai-whisper's max_initial_timestamp of 1.0 s


@dataclass(frozen=True)
class WhisperDims:
    """The sizes that define a Whisper architecture."""

    n_mels: int
    vocab_size: int
    d_model: int
    encoder_layers: int
    encoder_heads: int
    decoder_layers: int
    decoder_heads: int
    ffn_dim: int
    max_source_positions: int
    max_target_positions: int

    @property
    def is_multilingual(self) -> bool:
        return self.vocab_size >= MULTILINGUAL_VOCAB


def default_alignment_heads(decoder_layers: int, decoder_heads: int) -> list[list[int]]:
    """openai-whisper's fallback: every head of the second half of the decoder layers."""
    return [[layer, head] for layer in range(decoder_layers // 2, decoder_layers) for head in range(decoder_heads)]


def whisper_model_config(dims: WhisperDims, tokenizer, provenance: dict | None = None):
    """A ``WhisperConfig`` for ``dims`` whose special-token ids come from ``tokenizer``."""
    from transformers import WhisperConfig

    ids = special_token_ids(tokenizer)
    extra = {"whisper_probe": provenance} if provenance else {}
    return WhisperConfig(
        vocab_size=dims.vocab_size,
        num_mel_bins=dims.n_mels,
        d_model=dims.d_model,
        encoder_layers=dims.encoder_layers,
        encoder_attention_heads=dims.encoder_heads,
        decoder_layers=dims.decoder_layers,
        decoder_attention_heads=dims.decoder_heads,
        encoder_ffn_dim=dims.ffn_dim,
        decoder_ffn_dim=dims.ffn_dim,
        max_source_positions=dims.max_source_positions,
        max_target_positions=dims.max_target_positions,
        pad_token_id=ids["eot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        decoder_start_token_id=ids["sot"],
        begin_suppress_tokens=[220, ids["eot"]],
        tie_word_embeddings=True,
        dtype="float32",
        **extra,
    )


def whisper_generation_config(
    tokenizer,
    *,
    is_multilingual: bool,
    alignment_heads: list[list[int]],
    suppress_tokens: list[int],
    begin_suppress_tokens: list[int],
):
    """The ``GenerationConfig`` Whisper's ``generate()`` needs, with every id looked up in ``tokenizer``.

    Multilingual models default to ``task="transcribe"`` so that the forced prompt always holds a
    task token (``<|startoftranscript|><|xx|><|transcribe|><|notimestamps|>``), also when the
    language is detected; ``generate(task=..., language=...)`` overrides both per call.
    """
    from transformers import GenerationConfig

    ids = special_token_ids(tokenizer)
    settings = dict(
        decoder_start_token_id=ids["sot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        max_length=MAX_TARGET_POSITIONS,
        suppress_tokens=[int(i) for i in suppress_tokens],
        begin_suppress_tokens=[int(i) for i in begin_suppress_tokens],
        alignment_heads=[[int(layer), int(head)] for layer, head in alignment_heads],
        no_timestamps_token_id=ids["no_timestamps"],
        prev_sot_token_id=ids["sot_prev"],
        is_multilingual=is_multilingual,
        max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX,
        return_timestamps=False,
    )
    if is_multilingual:
        settings.update(
            lang_to_id=language_token_ids(tokenizer),
            task_to_id={"transcribe": ids["transcribe"], "translate": ids["translate"]},
            task="transcribe",
        )
    return GenerationConfig(**settings)

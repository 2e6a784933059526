"""espeak-ng speech, offline: libespeak-ng and its voices from the pip package ``espeakng-loader``
(an optional dependency: ``pip install espeakng-loader``), driven through ctypes.

:class:`Espeak` speaks text with a voice at a speaking rate and can report where each word
starts (espeak-ng's own WORD events, :meth:`Espeak.speak_words`): the example clips, the
long-form test recordings, the reproductions' speech sets and the built-in speech set of
``probe heads --alignment`` (:mod:`probe.speech_set`) are all made with it.
:data:`LECTURE_SENTENCES` is the English text those recordings speak.
"""

from __future__ import annotations

import ctypes

import numpy as np

# A lecture-like recording longer than two windows, for the long-form tests and benchmarks: distinct
# sentences (so a repeated one is a decoding error, not the script) with pauses between them.
LECTURE_SENTENCES = [
    "Whisper is a speech recognition model trained on many hours of audio.",
    "The encoder turns thirty seconds of sound into fifteen hundred frames.",
    "The decoder writes the words one token at a time.",
    "Long recordings are cut into windows, and each window starts where the last one ended.",
    "When the text repeats itself, the model tries again at a higher temperature.",
    "A lecture can last for an hour, so memory must stay small.",
    "Cross attention shows where in the audio each word was heard.",
    "The language token tells the model which language to write.",
    "Silence at the end of a window should not turn into words.",
    "Timestamps mark the start and the end of every segment.",
    "Students can record their own voice and look at every layer.",
    "The dashboard draws the spectrogram and the attention over it.",
    "Each plugin keeps the records it cares about in the store.",
    "Greedy decoding picks the most likely token at every step.",
    "Beam search keeps several candidate sentences and picks the best one.",
    "The no speech probability says how likely it is that nobody spoke.",
]


# espeak-ng's C API (speak_lib.h): synchronous output, UTF-8 text, positions in characters.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
# speak_lib.h's espeak_EVENT_TYPE values read here; an event list ends with LIST_TERMINATED
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_SILENCE_HOP_SECONDS = 0.01  # frames of the energy trim that ends each word
_SILENCE_OF_PEAK = 0.02  # a frame quieter than this fraction of the clip's loudest frame is silence


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """speak_lib.h's ``espeak_EVENT``: for a WORD event, ``text_position`` is the word's first
    character (1-based), ``length`` its characters and ``audio_position`` its start in ms."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


class Espeak:
    """libespeak-ng from ``espeakng-loader``, returning int16 samples at :attr:`sample_rate`."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        data_dir = espeakng_loader.get_data_path().encode()
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_dir, 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate})")
        self._chunks: list[np.ndarray] = []
        self._word_events: list[tuple[int, int, int]] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # keep a reference: C holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, count, events) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        if events:
            self._keep_word_events(ctypes.cast(events, ctypes.POINTER(_Event)))
        return 0  # 0 = keep synthesising

    def _keep_word_events(self, events) -> None:
        """(first character 1-based, characters, start ms) of each WORD event in this callback's list."""
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_WORD:
                self._word_events.append((events[i].text_position, events[i].length, events[i].audio_position))
            i += 1

    def speak(self, text: str, voice: str, words_per_minute: int) -> np.ndarray:
        """int16 [n] samples of ``text`` spoken by ``voice``."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_ESPEAK_RATE, words_per_minute, 0)
        self._chunks, self._word_events = [], []
        encoded = text.encode("utf-8")
        status = self.lib.espeak_Synth(
            encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
        )
        if status != 0 or self.lib.espeak_Synchronize() != 0:
            raise RuntimeError(f"espeak-ng failed to speak {text!r} ({status})")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)

    def speak_words(self, text: str, voice: str, words_per_minute: int) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
        """int16 [n] samples of ``text`` and each spoken word's (text, start s, end s).

        Starts are espeak-ng's own WORD events (where it put the word's first phoneme); a word ends
        where the next one starts, or for the last word at the end of the audio, less the silence
        before that point (10 ms frames under 2 % of the loudest frame's RMS).  espeak-ng runs some
        short function words into a neighbour ("at a time"): those have no event, so no entry.
        """
        samples = self.speak(text, voice, words_per_minute)
        spoken = [(text[first - 1:first - 1 + length], ms / 1000) for first, length, ms in self._word_events]
        hop = round(self.sample_rate * _SILENCE_HOP_SECONDS)
        frame_rms = _frame_rms(samples, hop)  # [frame]
        voiced = frame_rms >= _SILENCE_OF_PEAK * frame_rms.max(initial=0.0)
        bounds = [start for _, start in spoken[1:]] + [len(samples) / self.sample_rate]
        return samples, [(word, start, _voiced_end(voiced, start, bound, hop / self.sample_rate))
                         for (word, start), bound in zip(spoken, bounds)]


def _frame_rms(samples: np.ndarray, hop: int) -> np.ndarray:
    """RMS of consecutive ``hop``-sample frames of int16 ``samples`` (the last frame zero-padded), [frame]."""
    padded = np.pad(samples.astype(np.float64), (0, -len(samples) % hop)).reshape(-1, hop)
    return np.sqrt(np.mean(padded ** 2, axis=1))


def _voiced_end(voiced: np.ndarray, start: float, end: float, frame: float) -> float:
    """``end`` (s) moved back over the silent ``frame``-second frames before it (``voiced``: [frame]
    bool), never before the end of ``start``'s frame."""
    first = int(start / frame)
    last = min(int(end / frame), len(voiced))  # frames [first, last) lie wholly inside the word's span
    voiced_to = last
    while voiced_to > first + 1 and not voiced[voiced_to - 1]:
        voiced_to -= 1
    return end if voiced_to == last else voiced_to * frame

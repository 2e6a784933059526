"""Built-in plugin ``cross_attention``: where in the audio each decoded token looked, and word timings.

From the replay of each window's chosen tokens it keeps the cross-attention probabilities of every
decoder layer and head for every emitted token, cropped to the encoder frames that hold audio, and
derives word timestamps from the model's alignment heads with :mod:`probe.alignment` (median filter
+ DTW, as openai-whisper and faster-whisper do).  The filter and the DTW are handed to the trace
writer as functions (``writer.add_json(name, function)``), so with ``probe run`` they run on the
writer's thread while the next clips decode.

Records:
- ``cross_attention.weights`` [layer, head, token, frame] float16 — tokens of all windows in order;
  frames are 20 ms, relative to the token's window, zero beyond its audio.
- ``cross_attention.alignment`` [row, frame] float32 — the alignment-head average (z-scored and
  median-filtered) over each window's text tokens and its closing ``<|endoftext|>``: the matrix
  the DTW walks.  ``cross_attention.tokens`` marks these rows (``aligned``).
- ``cross_attention.tokens`` (table) — per token: window, step, id, text, whether it is text.
- ``cross_attention.words`` (json list) — word, start, end (seconds in the clip), window, token ids.

With ``plugin_options["rejected_cross_attention"]`` (``probe run --rejected-cross-attention``) it
also keeps what each attempt that temperature fallback *rejected* attended to:

- ``cross_attention.rejected`` [token, frame] float16 — the mean over the alignment heads of the
  cross-attention of each rejected attempt's tokens (teacher-forced as the kept attempt's are),
  attempts in order, frames as in ``weights``.
- ``cross_attention.rejected_tokens`` (table) — per row: window, attempt, temperature, step, id, text.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from probe.alignment import alignment_matrix, monotonic_words, words_from_alignment
from probe.hookspecs import hookimpl
from probe.signals import flag_words
from probe.spill import Concatenated, Spilled
from probe.tokens import piece_texts
from probe.transfer import to_host

from probe.plugins.cross_attention.present import Presentation

__version__ = Presentation.__version__


class Plugin(Presentation):
    """Every hook of cross_attention: the run hooks here, what it shows from :class:`Presentation`."""

    @hookimpl
    def probe_addoption(self, parser):
        parser.addoption("--rejected-cross-attention", action="store_true",
                         help="also keep where each attempt temperature fallback rejected listened (alignment heads)")

    @hookimpl
    def probe_run_start(self, run):
        run.state[self.name] = {"layers": {}, "windows": [], "rejected": {}, "rejected_rows": []}

    @hookimpl
    def probe_replay_points(self, run):
        return ["decoder.blocks.*.cross_attn.hook_pattern"]

    @hookimpl
    def probe_rejected_points(self, run):
        if not run.option("rejected_cross_attention", False):
            return None
        layers = sorted({layer for layer, _ in run.loaded.alignment_heads})
        return [f"decoder.blocks.{layer}.cross_attn.hook_pattern" for layer in layers]

    @hookimpl
    def probe_estimate(self, run):
        config, tokens = run.config, run.expected_tokens
        cells = config.decoder_layers * config.decoder_attention_heads * tokens * sum(run.frames)
        return {"cross_attention.weights": 2 * cells, "cross_attention.alignment": 4 * tokens * sum(run.frames)}

    @hookimpl
    def probe_capture(self, run, point, tensor, ctx):
        state = run.state[self.name]
        if ctx.phase == "rejected":  # [head, query, frame] of the alignment heads in this layer
            heads = [head for layer, head in run.loaded.alignment_heads if layer == point.layer]
            first = ctx.prompt_length - 1  # the position that emitted the attempt's first token
            attended = tensor[0, heads, first:len(ctx.tokens) - 1, :ctx.n_frames]
            state["rejected"].setdefault((ctx.window, ctx.attempt), []).append(attended)
            return
        state["layers"][point.layer] = tensor[0, :, :len(ctx.tokens)]  # [head, query, frame]

    @hookimpl
    def probe_window_end(self, run, window):
        state = run.state[self.name]
        self._keep_rejected(run, window)
        layers = state.pop("layers")
        state["layers"] = {}
        if not layers:
            return
        first = len(window.prompt) - 1  # the position that emitted the first generated token
        # [layer, head, query, frame] over every replay position, cropped to the frames holding audio
        every = torch.stack([layers[i] for i in sorted(layers)])[..., : window.n_frames]
        weights = every[:, :, first:first + len(window.tokens)]  # [layer, head, token, frame]
        # Words come from the tokens the transcript keeps (none when the window was skipped as no
        # speech); tokens after the last complete segment are decoded again by the next window.
        text_rows = [i for i, t in enumerate(window.tokens[:window.kept]) if t < run.eot]
        closing = window.kept if window.kept < len(window.tokens) else len(window.tokens) - 1
        rows = text_rows + [closing]  # the closing row: <|endoftext|> (or the token after the kept text)
        # As openai-whisper's timing.py: normalise over the <|startoftranscript|> prompt, text and
        # closing positions (timestamp tokens and any previous-text prompt left out), with the
        # softmax taken over the audio frames only.
        kept = list(range(window.sot_index, first)) + [first + i for i in rows] + [every.shape[2] - 1]
        heads = run.loaded.alignment_heads
        aligned = torch.stack([every[layer, head] for layer, head in heads])[:, kept].float()  # [head, row, frame]
        aligned = aligned / aligned.sum(-1, keepdim=True)
        # Both leave the device now without waiting; the median filter and DTW run where the
        # trace is written (probe_run_end hands them over as functions), off the decoding thread.
        # a long run keeps them on disk (run.spill) so an hour of audio does not pile up in memory
        keep = run.spill.put if run.long else to_host
        state["windows"].append({
            "weights": keep(weights.to(torch.float16)),
            "aligned": keep(aligned),
            "rows": slice(first - window.sot_index, first - window.sot_index + len(rows)),  # rows the DTW walks
            "text_rows": text_rows,
            "aligned_rows": rows,
            "text_tokens": [window.tokens[i] for i in text_rows],
            "text_probs": [float(np.exp(window.token_logprobs[i])) for i in text_rows] if window.token_logprobs else [],
            "index": window.index, "language": window.language, "start": window.start,
            "span": (window.start, min(window.next_seek / 100, run.clip.duration)),
        })

    def _keep_rejected(self, run, window) -> None:
        """The window's rejected attempts: alignment-head mean [token, frame] and their token rows."""
        state = run.state[self.name]
        for attempt in window.attempts:
            parts = state["rejected"].pop((window.index, attempt["attempt"]), None)
            if not parts:
                continue
            mean = torch.cat(parts).float().mean(0)  # [token, frame]: heads of every alignment layer
            state["rejected_rows"].append((to_host(mean.to(torch.float16)), [
                {"window": window.index, "attempt": attempt["attempt"], "temperature": attempt["temperature"],
                 "step": step, "token_id": int(token_id), "token": text}
                for step, (token_id, text) in enumerate(zip(attempt["tokens"],
                                                            piece_texts(run.tokenizer, attempt["tokens"])))]))
        state["rejected"].clear()

    @hookimpl
    def probe_run_end(self, run, writer):
        rejected = run.state[self.name]["rejected_rows"]
        if rejected:
            frames = max(matrix.shape[-1] for matrix, _ in rejected)
            writer.add_tensor("cross_attention.rejected",
                              lambda: np.concatenate([np.pad(m.wait().numpy(), ((0, 0), (0, frames - m.shape[-1])))
                                                      for m, _ in rejected]),
                              plugin=self.name, meta={"axes": ["token", "frame"], "frames_per_second": 50,
                                                      "alignment_heads": run.loaded.alignment_heads})
            writer.add_table("cross_attention.rejected_tokens", [row for _, rows in rejected for row in rows],
                             plugin=self.name)
        windows = run.state[self.name]["windows"]
        if not windows:
            return
        tokenizer, eot = run.tokenizer, run.eot
        frames = max(w["weights"].shape[-1] for w in windows)
        token_rows = []
        for result, captured in zip(run.windows, windows):
            text_rows, aligned_rows = set(captured["text_rows"]), set(captured["aligned_rows"])
            for step, (token_id, text) in enumerate(zip(result.tokens, piece_texts(tokenizer, result.tokens))):
                token_rows.append({"window": result.index, "step": step, "token_id": int(token_id),
                                   "token": text, "is_text": step in text_rows,
                                   "aligned": step in aligned_rows})

        def weights():  # [layer, head, token, frame], every window's tokens in order, streamed part by part
            return Concatenated([w["weights"] for w in windows], axis=2, last=frames)

        @functools.cache
        def alignments() -> list[tuple[np.ndarray, list[dict]]]:  # per window: (matrix, words), made once
            return [_alignment_and_words(w, tokenizer, eot) for w in windows]

        def alignment():  # [aligned_token, frame]
            return np.concatenate([np.pad(m, ((0, 0), (0, frames - m.shape[-1]))) for m, _ in alignments()])

        axes = {"axes": ["layer", "head", "token", "frame"], "frames_per_second": 50}
        # functions: made where the trace is written (a background thread while the next clips decode)
        writer.add_tensor("cross_attention.weights", weights, plugin=self.name, meta=axes)
        writer.add_tensor("cross_attention.alignment", alignment, plugin=self.name,
                          meta={"axes": ["aligned_token", "frame"], "alignment_heads": run.loaded.alignment_heads})
        writer.add_table("cross_attention.tokens", token_rows, plugin=self.name)
        spans = {w["index"]: w["span"] for w in windows}
        writer.add_json("cross_attention.words",
                        lambda: monotonic_words([w for _, words in alignments() for w in words], spans),
                        plugin=self.name)


def _alignment_and_words(captured: dict, tokenizer, eot: int) -> tuple[np.ndarray, list[dict]]:
    """One window's alignment matrix [text_token + 1, frame] (float32) and its timed words."""
    aligned = captured["aligned"]  # [head, row, frame] float32: on its way to the host, or on disk
    aligned = torch.from_numpy(np.array(aligned.load())) if isinstance(aligned, Spilled) else aligned.wait()
    matrix = alignment_matrix(aligned, rows=captured["rows"]).numpy()  # float32
    words = (words_from_alignment(matrix, captured["text_tokens"], tokenizer, captured["language"], eot,
                                  offset=captured["start"]) if captured["text_tokens"] else [])
    words = [{**w, "window": captured["index"]} for w in words]
    if captured["text_probs"]:  # each word's probability (mean over its tokens), then its anomaly score
        probs, at = captured["text_probs"], 0
        for word in words:
            count = len(word["tokens"])
            word["probability"] = round(float(np.mean(probs[at:at + count])), 4) if count else None
            at += count
        words = flag_words(words)
    return matrix, words

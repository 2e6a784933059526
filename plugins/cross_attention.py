"""Built-in plugin ``cross_attention``: where in the audio each decoded token looked, and word timings.

From the replay of each window's chosen tokens it keeps the cross-attention probabilities of every
decoder layer and head for every emitted token, cropped to the encoder frames that hold audio, and
derives word timestamps from the model's alignment heads with :mod:`probe.alignment` (median filter
+ DTW, as openai-whisper and faster-whisper do).

Records:
- ``cross_attention.weights`` [layer, head, token, frame] float16 — tokens of all windows in order;
  frames are 20 ms, relative to the token's window, zero beyond its audio.
- ``cross_attention.alignment`` [row, frame] float32 — the alignment-head average (z-scored and
  median-filtered) over each window's text tokens and its closing ``<|endoftext|>``: the matrix
  the DTW walks.  ``cross_attention.tokens`` marks these rows (``aligned``).
- ``cross_attention.tokens`` (table) — per token: window, step, id, text, whether it is text.
- ``cross_attention.words`` (json list) — word, start, end (seconds in the clip), window, token ids.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from probe.alignment import alignment_matrix, words_from_alignment
from probe.hookspecs import hookimpl
from probe.transfer import to_host

__version__ = "1.0"


class Plugin:
    name = "cross_attention"
    __version__ = __version__

    @hookimpl
    def probe_run_start(self, run):
        run.state[self.name] = {"layers": {}, "windows": []}

    @hookimpl
    def probe_replay_points(self, run):
        return ["decoder.blocks.*.cross_attn.hook_pattern"]

    @hookimpl
    def probe_estimate(self, run):
        config, tokens = run.config, run.expected_tokens
        cells = config.decoder_layers * config.decoder_attention_heads * tokens * sum(run.frames)
        return {"cross_attention.weights": 2 * cells, "cross_attention.alignment": 4 * tokens * sum(run.frames)}

    @hookimpl
    def probe_capture(self, run, point, tensor, ctx):
        run.state[self.name]["layers"][point.layer] = tensor[0, :, :len(ctx.tokens)]  # [head, query, frame]

    @hookimpl
    def probe_window_end(self, run, window):
        state = run.state[self.name]
        layers = state.pop("layers")
        state["layers"] = {}
        if not layers:
            return
        first = len(window.prompt) - 1  # the position that emitted the first generated token
        # [layer, head, query, frame] over every replay position, cropped to the frames holding audio
        every = torch.stack([layers[i] for i in sorted(layers)])[..., : window.n_frames]
        weights = every[:, :, first:first + len(window.tokens)]  # [layer, head, token, frame]
        text_rows = [i for i, t in enumerate(window.tokens) if t < run.eot]
        eot_rows = [i for i, t in enumerate(window.tokens) if t == run.eot][:1]
        rows = text_rows + (eot_rows or [len(window.tokens) - 1])
        # As openai-whisper's timing.py: normalise over the prompt, text and <|endoftext|> positions
        # (timestamp tokens left out), with the softmax taken over the audio frames only.
        kept = list(range(first)) + [first + i for i in rows] + [every.shape[2] - 1]
        heads = run.loaded.alignment_heads
        aligned = torch.stack([every[layer, head] for layer, head in heads])[:, kept].float()  # [head, row, frame]
        aligned = aligned / aligned.sum(-1, keepdim=True)
        text_tokens = [window.tokens[i] for i in text_rows]
        matrix = alignment_matrix(aligned)[first:first + len(rows)].cpu().numpy()  # [text_token + 1, frame]
        words = (words_from_alignment(matrix, text_tokens, run.tokenizer, window.language, run.eot,
                                      offset=window.start) if text_tokens else [])
        state["windows"].append({
            "weights": to_host(weights.to(torch.float16)),  # off the device now, waited for at run end
            "alignment": torch.from_numpy(matrix),
            "text_rows": text_rows,
            "aligned_rows": rows,
            "words": [{**w, "window": window.index} for w in words],
        })

    @hookimpl
    def probe_run_end(self, run, writer):
        windows = run.state[self.name]["windows"]
        if not windows:
            return
        frames = max(w["weights"].shape[-1] for w in windows)
        weights = torch.cat([F.pad(w["weights"].wait(), (0, frames - w["weights"].shape[-1])) for w in windows],
                            dim=2)
        alignment = torch.cat([F.pad(w["alignment"], (0, frames - w["alignment"].shape[-1])) for w in windows])
        tokenizer = run.tokenizer
        token_rows = []
        for result, captured in zip(run.windows, windows):
            text_rows, aligned_rows = set(captured["text_rows"]), set(captured["aligned_rows"])
            for step, token_id in enumerate(result.tokens):
                token_rows.append({"window": result.index, "step": step, "token_id": int(token_id),
                                   "token": tokenizer.decode([token_id]), "is_text": step in text_rows,
                                   "aligned": step in aligned_rows})
        axes = {"axes": ["layer", "head", "token", "frame"], "frames_per_second": 50}
        writer.add_tensor("cross_attention.weights", weights, plugin=self.name, meta=axes)
        writer.add_tensor("cross_attention.alignment", alignment.numpy().astype(np.float32), plugin=self.name,
                          meta={"axes": ["aligned_token", "frame"], "alignment_heads": run.loaded.alignment_heads})
        writer.add_table("cross_attention.tokens", token_rows, plugin=self.name)
        words = [w for captured in windows for w in captured["words"]]
        writer.add_json("cross_attention.words", words, plugin=self.name)

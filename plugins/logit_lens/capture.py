"""Built-in plugin ``logit_lens``: what each decoder layer would predict if it were the last.

On the replay of each window's chosen tokens, every decoder block's residual stream (and the
final one) is passed through the decoder's final layer norm and the unembedding; for each emitted
token this records the top-k predictions per layer and the rank and probability of the token the
model really emitted.  Computed on the model's device, one layer at a time.

Records (tokens of all windows in order; layer ``L`` = after block ``L``):
``logit_lens.top_ids`` [layer, token, k] int32, ``logit_lens.top_probs`` [layer, token, k] float32,
``logit_lens.top_tokens`` (json, the same as text), ``logit_lens.chosen_rank`` [layer, token] int32
(0 = top), ``logit_lens.chosen_prob`` [layer, token] float32.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from probe.hookspecs import hookimpl
from probe.tokens import piece_texts
from probe.plugins.token_probs.capture import add_top_k, check_top_k, top_k
from probe.transfer import to_device

from probe.plugins.logit_lens.present import Presentation

__version__ = Presentation.__version__


class Plugin(Presentation):
    """Every hook of logit_lens: the run hooks here, what it shows from :class:`Presentation`."""

    @hookimpl
    def probe_addoption(self, parser):
        add_top_k(parser)

    @hookimpl
    def probe_run_start(self, run):
        check_top_k(run)
        run.state[self.name] = {"layers": {}, "windows": []}

    @hookimpl
    def probe_replay_points(self, run):
        return ["decoder.blocks.*.hook_resid_post"]

    @hookimpl
    def probe_estimate(self, run):
        cells = run.config.decoder_layers * run.expected_tokens * len(run.window_spans)
        k = top_k(run)
        return {"logit_lens.top_ids": 4 * k * cells, "logit_lens.top_probs": 4 * k * cells,
                "logit_lens.chosen_rank": 4 * cells, "logit_lens.chosen_prob": 4 * cells}

    @hookimpl
    def probe_capture(self, run, point, tensor, ctx):
        k = top_k(run)
        model = run.model
        norm = model.model.decoder.layer_norm
        resid = tensor[0, ctx.prompt_length - 1:len(ctx.tokens) - 1]  # [token, d_model]: emitting positions
        normed = F.layer_norm(resid, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        logits = F.linear(normed, model.proj_out.weight).float()  # [token, vocab]
        probs = logits.softmax(-1)
        emitted = to_device(ctx.tokens[ctx.prompt_length:], logits.device)  # [token]
        chosen_logit = logits.gather(1, emitted[:, None])  # [token, 1]
        rank = (logits > chosen_logit).sum(-1)  # [token]
        top_probs, top_ids = probs.topk(k, dim=-1)  # [token, k]
        run.state[self.name]["layers"][point.layer] = (top_ids, top_probs, rank, probs.gather(1, emitted[:, None])[:, 0])

    @hookimpl
    def probe_window_end(self, run, window):
        state = run.state[self.name]
        layers, state["layers"] = state["layers"], {}
        if layers:
            # tuple of 4 tensors, each stacked over layers: [layer, token, ...]
            state["windows"].append(tuple(torch.stack([layers[i][part] for i in sorted(layers)]).cpu()
                                          for part in range(4)))

    @hookimpl
    def probe_run_end(self, run, writer):
        windows = run.state[self.name]["windows"]
        if not windows:
            return
        top_ids, top_probs, rank, chosen = (torch.cat([w[part] for w in windows], dim=1) for part in range(4))
        meta = {"axes": ["layer", "token", "k"]}
        writer.add_tensor("logit_lens.top_ids", top_ids.numpy().astype(np.int32), plugin=self.name, meta=meta)
        writer.add_tensor("logit_lens.top_probs", top_probs.numpy().astype(np.float32), plugin=self.name, meta=meta)
        named = np.unique(top_ids.numpy()).tolist()
        text = dict(zip(named, piece_texts(run.tokenizer, named)))  # never "�": split characters as bytes
        writer.add_json("logit_lens.top_tokens", [[[text[int(i)] for i in row] for row in layer]
                                                  for layer in top_ids.numpy()], plugin=self.name,
                        meta={"axes": ["layer", "token", "k"]})
        meta = {"axes": ["layer", "token"]}
        writer.add_tensor("logit_lens.chosen_rank", rank.numpy().astype(np.int32), plugin=self.name, meta=meta)
        writer.add_tensor("logit_lens.chosen_prob", chosen.numpy().astype(np.float32), plugin=self.name, meta=meta)

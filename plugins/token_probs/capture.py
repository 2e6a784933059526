"""Built-in plugin ``token_probs``: how sure the decoder was of each token, and the multitask head.

Per generated token: the token, its probability and log-probability under the model's softmax
(before generate()'s logits processors), the entropy of the distribution and the top-k alternatives
(``plugin_options["top_k"]``, default 5).  With greedy decoding these come from the very logits
``generate()`` chose each token from (``hook_logits`` at every step: nothing is recomputed); with
beam search a step's rows belong to beams, so they come from the replay of the chosen sequence.
Per window: the language-detection distribution, the no-speech probability and the forced prompt
tokens.  The statistics are reduced on the device as each window ends and copied off it without
waiting; the per-token table (decoding every top-k alternative to text) is made on the writer's
thread.

Records: ``token_probs.tokens`` (table), ``token_probs.top_k_ids`` [token, k] int32,
``token_probs.top_k_probs`` [token, k] float32, ``token_probs.multitask`` (json).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from probe.errors import OptionError
from probe.hookspecs import hookimpl
from probe.tokens import piece_texts
from probe.transfer import to_device, to_host

from probe.plugins.token_probs.present import Presentation

__version__ = Presentation.__version__


def add_top_k(parser) -> None:
    """``--top-k``: declared by token_probs and logit_lens alike, so either one alone still has it."""
    parser.addoption("--top-k", type=int, default=5, help="alternatives kept per token (token_probs, logit_lens)")


def top_k(run) -> int:
    """Alternatives to keep per token: ``--top-k`` / ``plugin_options["top_k"]`` (default 5), within 1 … vocab."""
    return max(1, min(int(run.option("top_k", 5)), run.config.vocab_size))


def check_top_k(run) -> None:
    vocab, k = run.config.vocab_size, run.option("top_k", 5)
    if not isinstance(k, int) or not 0 <= k <= vocab:
        raise OptionError(f"--top-k must be between 0 and the vocabulary size {vocab} (got {k!r})")


def token_kind(token_id: int, eot: int, first_timestamp: int) -> str:
    if token_id >= first_timestamp:
        return "timestamp"
    if token_id >= eot:
        return "special"
    return "text"


def token_stats(logits: torch.Tensor, tokens: list[int], k: int) -> tuple[torch.Tensor, ...]:
    """logits [token, vocab] and the tokens they emitted → (chosen log-prob [token], entropy [token]
    nats, top-k ids [token, k], top-k probs [token, k]), all still on the logits' device."""
    log_probs = logits.float().log_softmax(-1)
    emitted = to_device(tokens, logits.device)  # [token]
    chosen = log_probs.gather(1, emitted[:, None])[:, 0]  # [token]
    entropy = -(log_probs.exp() * log_probs).nan_to_num().sum(-1)  # [token]
    top_log_probs, top_ids = log_probs.topk(k, dim=-1)  # [token, k]
    return chosen, entropy, top_ids, top_log_probs.exp()


class Plugin(Presentation):
    """Every hook of token_probs: the run hooks here, what it shows from :class:`Presentation`."""

    @hookimpl
    def probe_addoption(self, parser):
        add_top_k(parser)

    @hookimpl
    def probe_run_start(self, run):
        check_top_k(run)
        # per window: (chosen log-prob, entropy, top ids, top probs); "steps": greedy logits rows [vocab]
        run.state[self.name] = {"windows": [], "steps": []}

    @hookimpl
    def probe_decode_points(self, run):
        return ["hook_logits"] if run.options.num_beams == 1 else []

    @hookimpl
    def probe_replay_points(self, run):
        return ["hook_logits"] if run.options.num_beams > 1 else []

    @hookimpl
    def probe_estimate(self, run):
        tokens = run.expected_tokens * len(run.window_spans)
        k = top_k(run)
        return {"token_probs.top_k_ids": 4 * k * tokens, "token_probs.top_k_probs": 4 * k * tokens,
                "token_probs.tokens": (200 + 40 * k) * tokens}

    @hookimpl
    def probe_capture(self, run, point, tensor, ctx):
        state = run.state[self.name]
        if ctx.phase == "decode":  # greedy: [1, query, vocab]; the last position emitted this step's token
            state["steps"].append(tensor[0, -1].clone())  # [vocab]; a copy, not a view of the whole batch
            return
        logits = tensor[0, ctx.prompt_length - 1:len(ctx.tokens) - 1]  # [token, vocab]: emitting positions
        state["windows"].append(_to_host(token_stats(logits, ctx.tokens[ctx.prompt_length:], top_k(run))))

    @hookimpl
    def probe_window_end(self, run, window):
        state = run.state[self.name]
        steps, state["steps"] = state["steps"], []
        if steps:  # a batched row goes on after its <|endoftext|>: those steps are padding
            if len(steps) < len(window.tokens):
                raise RuntimeError(f"saw {len(steps)} decoding steps for {len(window.tokens)} tokens")
            state["windows"].append(_to_host(token_stats(torch.stack(steps[:len(window.tokens)]), window.tokens,
                                                         top_k(run))))

    @hookimpl
    def probe_run_end(self, run, writer):
        tokenizer = run.tokenizer
        eot, first_ts = run.eot, run.model.generation_config.no_timestamps_token_id + 1
        windows = [(w.index, len(w.prompt), list(w.tokens)) for w in run.windows]
        stats = run.state[self.name]["windows"]

        @functools.cache
        def made() -> tuple[list[dict], np.ndarray, np.ndarray]:  # rows, top-k ids, top-k probs; made once
            rows, all_ids, all_probs = [], [], []
            for (index, prompt_length, tokens), kept in zip(windows, stats):
                chosen, entropy, top_ids, top_probs = (copy.wait().numpy() for copy in kept)
                top_ids, top_probs = top_ids.astype(np.int32), top_probs.astype(np.float32)
                all_ids.append(top_ids)
                all_probs.append(top_probs)
                named = sorted({*tokens, *np.unique(top_ids).tolist()})
                text = dict(zip(named, piece_texts(tokenizer, named)))  # never "�": split characters as bytes
                for step, token_id in enumerate(tokens):
                    rows.append({
                        "window": index,
                        "step": step,
                        "position": prompt_length + step,
                        "token_id": int(token_id),
                        "token": text[token_id],
                        "kind": token_kind(token_id, eot, first_ts),
                        "prob": float(np.exp(chosen[step])),
                        "logprob": float(chosen[step]),
                        "entropy": float(entropy[step]),
                        "top_k_ids": top_ids[step].tolist(),
                        "top_k_tokens": [text[int(t)] for t in top_ids[step]],
                        "top_k_probs": [round(float(p), 6) for p in top_probs[step]],
                    })
            return rows, np.concatenate(all_ids), np.concatenate(all_probs)

        if any(tokens for _, _, tokens in windows):  # functions: made where the trace is written
            writer.add_table("token_probs.tokens", lambda: made()[0], plugin=self.name)
            writer.add_tensor("token_probs.top_k_ids", lambda: made()[1], plugin=self.name,
                              meta={"axes": ["token", "k"]})
            writer.add_tensor("token_probs.top_k_probs", lambda: made()[2], plugin=self.name,
                              meta={"axes": ["token", "k"]})
        writer.add_json("token_probs.multitask", {"windows": [{
            "window": w.index,
            "language": w.language,
            "language_probability": w.language_probability,
            "language_probs": {code: round(p, 6) for code, p in w.language_probs.items()},
            "no_speech_probability": w.no_speech_probability,
            "task": run.options.task,
            "prompt": [{"id": t, "token": s} for t, s in zip(w.prompt, piece_texts(tokenizer, w.prompt))],
        } for w in run.windows]}, plugin=self.name)


def _to_host(stats: tuple[torch.Tensor, ...]) -> tuple:
    """token_stats' tensors on their way off the device (copies started, not waited for)."""
    return tuple(to_host(t) for t in stats)

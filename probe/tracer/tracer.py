"""The :class:`Tracer`: one model, one plugin manager, clips decoded by the plain ``generate()`` call.

:meth:`Tracer.start` makes a clip's :class:`~probe.tracer.run.Run` (plugins started, hook points
resolved, records estimated); :meth:`Tracer.decode` makes one ``model.generate(input_features,
...)`` call for a batch of runs, with every hook of that call — the requested hook points, the
decoder step counter, the cross-attention key/value keepers, the observer of generate()'s loop —
registered in one :class:`probe.hooks.Hooks` and removed when it returns or raises;
:meth:`Tracer.replay` is the teacher-forced pass over a window's kept tokens; :meth:`Tracer.finish`
lets the plugins write a run's records.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from probe import hooks as hooks_mod
from probe import interventions as interventions_mod
from probe.audio import AudioClip
from probe.constants import SAMPLE_RATE, WINDOW_SECONDS
from probe.errors import OptionError
from probe.longform import GenerateObserver, check_supported
from probe.quiet import quiet_transformers
from probe.plugin_manager import plugin_timing
from probe.points import HookPoint
from probe.tracer.budget import estimate_records, memory_budget_message
from probe.tracer.cross_kv import cache_kwargs
from probe.tracer.options import DecodeOptions, language_codes
from probe.tracer.routing import Item, Router, resolve_routes, union
from probe.tracer.run import CaptureContext, Run, estimated_spans
from probe.tracer.windows import Windows

CHUNKED_FEATURES_SECONDS = 120  # longer single clips get their log-Mel in chunks (probe.features)


class Tracer:
    """Decodes clips with one model and one plugin manager; see the module docstring."""

    def __init__(self, loaded, pm, options: DecodeOptions, points=(), plugin_options=None, progress: bool = False,
                 interventions=()):
        options.validate(loaded)
        check_supported(loaded.model)
        self.progress = progress  # a progress bar (stderr) for clips longer than one window
        self.loaded, self.pm, self.options = loaded, pm, options
        self.points = list(points)
        from probe.plugin_options import collect_options

        # every option a plugin declared (probe_addoption) has its default unless given
        self.plugin_options = {**collect_options(pm).defaults(), **dict(plugin_options or {})}
        # the user's, then the plugins' (probe_interventions); checked before anything is decoded
        # and applied to every generate() call (probe.interventions)
        from_plugins = [item for found in pm.hook.probe_interventions(config=loaded.model.config,
                                                                        options=dict(self.plugin_options))
                        for item in (found or [])]
        self.interventions = interventions_mod.prepare(loaded, interventions_mod.resolve(
            loaded.model.config, [*(interventions or ()), *from_plugins], model_id=loaded.model_id))
        gen = loaded.model.generation_config
        tokenizer = loaded.processor.tokenizer
        self.sot = gen.decoder_start_token_id
        self.eot = gen.eos_token_id
        self.no_speech = _no_speech_token(tokenizer)
        self.languages = language_codes(loaded)
        self.language_of = {token_id: code for code, token_id in self.languages.items()}

    # -- inputs -----------------------------------------------------------------------------
    def features(self, clips: list[AudioClip]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What a user hands ``generate()``: log-Mel features [batch, n_mels, mel_frame] and, for long
        audio, the attention mask [batch, mel_frame] (clips of ≤ 30 s are padded to 3000 frames)."""
        extractor = self.loaded.processor.feature_extractor
        samples = [clip.samples for clip in clips]
        made = [clip.features for clip in clips]
        if all(f is not None and f.shape == (extractor.feature_size, extractor.nb_max_frames) for f in made):
            # made beside decoding by the same extractor (a dataset run's CPU stage), [n_mels, 3000] each
            features = torch.from_numpy(np.stack(made))  # [batch, n_mels, mel_frame]
            return features.to(self.loaded.device, self.loaded.dtype), None
        if all(len(s) <= WINDOW_SECONDS * SAMPLE_RATE for s in samples):
            out = extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt")
            mask = None
        elif len(samples) == 1 and len(samples[0]) > CHUNKED_FEATURES_SECONDS * SAMPLE_RATE:
            from probe.features import log_mel

            features = log_mel(samples[0], extractor)[None]  # [1, n_mels, mel_frame]; bounded memory
            mask = torch.ones(features.shape[0], features.shape[-1], dtype=torch.long, device=self.loaded.device)
            return features.to(self.loaded.device, self.loaded.dtype), mask
        else:
            out = extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt", truncation=False,
                            padding="longest", return_attention_mask=True)
            mask = out.attention_mask.to(self.loaded.device)
        return out.input_features.to(self.loaded.device, self.loaded.dtype), mask

    # -- per clip ---------------------------------------------------------------------------
    def start(self, clip: AudioClip) -> Run:
        """A new :class:`Run` for ``clip``: plugins started, hook points resolved."""
        options = self.options
        if clip.duration > WINDOW_SECONDS and options.prefix:
            raise OptionError(f"--prefix works on clips of up to {WINDOW_SECONDS} s; {clip.source} is "
                              f"{clip.duration:.1f} s (long audio is decoded with timestamps)")
        if clip.duration > WINDOW_SECONDS and not options.timestamps:
            # transformers' long-form generate() seeks by the timestamps it decodes: it needs them
            # (the manifest's decode options say so)
            options = dataclasses.replace(options, timestamps=True)
        run = Run(loaded=self.loaded, clip=clip, options=options, points=self.points,
                  plugin_options=self.plugin_options, window_spans=estimated_spans(clip), declared_options=True,
                  interventions=interventions_mod.summary(self.interventions))
        with plugin_timing(run.plugin_seconds):
            self.pm.hook.probe_run_start(run=run)
        resolve_routes(self.pm, run)
        estimate_records(self.pm, run, self.loaded.device)
        return run

    def trace_many(self, clips: Iterable[AudioClip], batch_size: int = 1) -> Iterator[Run]:
        """Trace clips, ``batch_size`` clips per ``generate()`` call (long ones too: transformers'
        batched long-form decoding); yields each run once it is decoded (then call ``finish``)."""
        if batch_size < 1:
            raise OptionError(f"--batch-size must be ≥ 1 (got {batch_size})")
        batch: list[Run] = []
        for clip in clips:
            batch.append(self.start(clip))
            if len(batch) == batch_size:
                self._decode_or_release(batch)
                yield from batch
                batch = []
        if batch:
            self._decode_or_release(batch)
            yield from batch

    def _decode_or_release(self, runs: list[Run]) -> None:
        try:
            self.decode(runs)
        except BaseException:
            for run in runs:
                run.spill.remove()
            raise

    def decode(self, runs: list[Run]) -> None:
        """One plain ``generate()`` call for ``runs``' clips, watched window by window."""
        model = self.loaded.model
        features, mask = self.features([run.clip for run in runs])
        kwargs = runs[0].options.generate_kwargs(self.loaded)
        kwargs["return_timestamps"] = any(run.options.timestamps for run in runs)
        if mask is not None:
            kwargs["attention_mask"] = mask
        max_frames = (mask.sum(-1).tolist() if mask is not None and len(runs) > 1
                      else [features.shape[-1]] * len(runs))
        items = [Item(run, CaptureContext(num_beams=self.options.num_beams)) for run in runs]
        router = Router([])
        decode_points = union(run.decode_routes.points for run in runs)
        windows = Windows(self, items, router, union(run.replay_routes.points for run in runs),
                          [int(f) for f in max_frames], union(run.rejected_routes.points for run in runs))
        with memory_budget_message(self.loaded.device), torch.inference_mode(), windows.watching(self.progress), \
                hooks_mod.Hooks(model) as hooks:  # every hook of this generate() call, removed on the way out
            # interventions first: every capture hook, in decoding and in the replays, sees their changes
            interventions_mod.apply(hooks, model, self.interventions, seeks=windows.seeks)
            if self.options.prefix:  # its language detection runs on the intervened model too
                with quiet_transformers():
                    kwargs["decoder_input_ids"] = self.prefix_prompt(features)
            hooks.points(decode_points, router.decoding)
            if any(p.side == "decoder" for p in decode_points):
                hooks.forward_pre(model.model.decoder, router.count_step)  # ctx.step, only when someone reads it
            windows.cross_kv.hook(hooks)
            with GenerateObserver(model, windows, self.options.multilingual, hooks), quiet_transformers():
                if self.options.seed is not None:
                    torch.manual_seed(self.options.seed)
                model.generate(features, **kwargs)
                windows.finished()

    def prefix_prompt(self, features: torch.Tensor) -> torch.Tensor:
        """The ``decoder_input_ids`` [batch, prompt] that force ``--prefix``: the start tokens
        generate() would use (``<|startoftranscript|><|lang|><|task|><|notimestamps|>``, the language
        detected as generate() detects it when none is given), then the prefix's tokens, encoded as
        openai-whisper and faster-whisper encode it (``" " + prefix.strip()``)."""
        model, options = self.loaded.model, self.options
        gen = model.generation_config
        batch = features.shape[0]
        prefix = self.loaded.processor.tokenizer.encode(" " + options.prefix.strip(), add_special_tokens=False)
        longest = model.config.max_target_positions // 2 - 1
        if len(prefix) > longest:
            raise OptionError(f"--prefix is {len(prefix)} tokens long; this model takes at most {longest}")
        if self.languages:
            languages = ([self.languages[options.language]] * batch if options.language is not None
                         else model.detect_language(input_features=features, generation_config=gen).tolist())
            starts = [[self.sot, int(language), gen.task_to_id[options.task]] for language in languages]
        else:
            starts = [[self.sot]] * batch
        return torch.tensor([start + [gen.no_timestamps_token_id] + prefix for start in starts],
                            device=features.device)

    def replay(self, router: Router, encoder_hidden: torch.Tensor, sequences: list[list[int]],
               replay_points: list[HookPoint], cross_cache=None, capture=None) -> torch.Tensor:
        """Teacher-forced pass of every row's whole sequence, in one decoder call.

        Position q emitted token q + 1; the last position emits nothing (openai-whisper's alignment
        normalises over it too).  Shorter sequences are padded at the end, which the causal mask
        keeps from touching real positions; plugins read ``len(ctx.tokens)`` positions.  The
        cross-attention keys and values ``generate()`` computed are reused when given (``cross_cache``).
        Captures go to ``capture`` (default: the router's replay table).
        encoder_hidden: [batch, frame, d_model] → the decoder's last hidden state [batch, query, d_model].
        """
        model = self.loaded.model
        longest = max(len(sequence) for sequence in sequences)
        ids = torch.tensor([sequence + [self.eot] * (longest - len(sequence)) for sequence in sequences],
                           device=encoder_hidden.device)  # [batch, query]
        # nothing is decoded from this pass: patterned attention returns probs·v, not its kernel too
        with hooks_mod.attach(model, replay_points, capture or router.replaying, outputs_from_patterns=True):
            hidden = model.model.decoder(input_ids=ids, encoder_hidden_states=encoder_hidden,
                                         **cache_kwargs(model.model.decoder, cross_cache)
                                         ).last_hidden_state  # [batch, query, d_model]
            if any(p.name == "hook_logits" for p in replay_points):
                model.proj_out(hidden)
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., d_model] → logits [..., vocab], not through proj_out's module call (no hook sees it)."""
        return F.linear(hidden, self.loaded.model.proj_out.weight)

    def emitted_logprobs(self, hidden: torch.Tensor, prompt_length: int, tokens: list[int]) -> list[float]:
        """Log-probability of each of ``tokens`` from one row's replay hidden states [query, d_model]."""
        if not tokens:
            return []
        rows = hidden[prompt_length - 1: prompt_length - 1 + len(tokens)]  # [token, d_model]
        log_probs = self.logits(rows).float().log_softmax(-1)  # [token, vocab]
        emitted = torch.tensor(tokens, device=rows.device)[:, None]
        return log_probs.gather(1, emitted)[:, 0].tolist()

    def language_probs(self, logits: torch.Tensor) -> list[tuple[dict[str, float], float]]:
        """From the logits at <|startoftranscript|> [batch, vocab]: language distribution and no-speech."""
        logits = logits.float()
        no_speech = (logits.softmax(-1)[:, self.no_speech].tolist() if self.no_speech is not None
                     else [0.0] * len(logits))
        if not self.languages:
            return [({"en": 1.0}, p) for p in no_speech]
        probs = logits[:, list(self.languages.values())].softmax(-1).tolist()  # [batch, language]
        return [(dict(sorted(zip(self.languages, row), key=lambda item: -item[1])), p)
                for row, p in zip(probs, no_speech)]

    def finish(self, run: Run, writer) -> None:
        """Let every plugin write its records for ``run`` into ``writer``."""
        with plugin_timing(run.plugin_seconds):
            self.pm.hook.probe_run_end(run=run, writer=writer)

    def trace(self, clip: AudioClip, writer=None) -> Run:
        """Decode one clip with every plugin watching; records go to ``writer`` (a TraceWriter)."""
        run = next(self.trace_many([clip]))
        if writer is not None:
            self.finish(run, writer)
        return run


def _no_speech_token(tokenizer) -> int | None:
    for token in ("<|nospeech|>", "<|nocaptions|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            return token_id
    return None


"""cross_attention's dashboard page (*Cross-attention*) and its lesson step.

The page draws which audio each decoded token listens to, the word timestamps from the alignment
heads, and plays the span a token or word attends to.  Nothing here imports torch.
"""

from __future__ import annotations

import functools

from probe import figures
from probe.plugins.cross_attention.figures import attended_span, cross_attention_rows, timed_words, token_word

ALIGNMENT = "alignment heads (average)"
MEAN = "mean of heads"
WINDOW_KEY = "cross_window"
TOKEN_KEY, WORD_KEY = "cross_token", "cross_word"  # choices of one window: reset when the window changes


def token_key(window: int) -> str:
    """The token picker's key in ``window``: one widget per window, so the browser never shows a
    token of the window picked before (a kept key would keep its old text on screen)."""
    return f"{TOKEN_KEY}.{window}"


def word_key(window: int) -> str:
    return f"{WORD_KEY}.{window}"


def cross_attention_page(trace, st) -> None:
    from probe.dashboards import context

    config = (trace.manifest.get("model") or {}).get("config") or {}
    st.title("Cross-attention alignment")
    left, right = st.columns(2)
    source = left.selectbox("Attention", [ALIGNMENT, *range(int(config.get("decoder_layers", 1)))],
                            format_func=lambda value: value if value == ALIGNMENT else f"decoder layer {value}",
                            key="cross_source")
    layer = None if source == ALIGNMENT else source
    head_choice = right.selectbox("Head", [MEAN, *range(int(config.get("decoder_attention_heads", 1)))],
                                  key="cross_head", disabled=layer is None)
    head = None if layer is None or head_choice == MEAN else head_choice
    n_windows = max(1, len(trace.manifest.get("windows") or []))
    window = context.pick_window(trace, WINDOW_KEY, resets=tuple(key(i) for i in range(n_windows)
                                                                 for key in (token_key, word_key)))
    if not context.show_figure(trace, "cross_attention", layer=layer, head=head, window=window):
        st.stop()

    st.subheader("Listen to what a token attends to")
    _, tokens = cross_attention_rows(trace, layer, head, window)
    if not tokens:
        st.info("No tokens were decoded in this window.")
        st.stop()
    labels = dict(zip((token["step"] for token in tokens),
                      figures.token_labels(trace, [token["token_id"] for token in tokens])))
    # a token is picked by its step in the window, so it stays picked when the attention source
    # changes (the alignment heads show text tokens only) and never names another window's token
    step = st.selectbox("Token", list(labels), key=token_key(window),
                        format_func=lambda s: f"{s}: {labels[s]}")
    token_index = next(i for i, token in enumerate(tokens) if token["step"] == step)
    start, end = attended_span(trace, token_index, layer, head, window)
    word = token_word(trace, tokens, token_index, window)
    if word is not None:
        st.caption(f"Part of the word “{word['word'].strip()}”, which DTW on the alignment heads places at "
                   f"{word['start']:.2f}–{word['end']:.2f} s; playing {start:.2f}–{end:.2f} s.")
    else:
        st.caption(f"No timed word holds this token (a timestamp or special token): frames around its attention "
                   f"peak between the neighbouring words, holding at least half the peak: {start:.2f}–{end:.2f} s.")
    st.audio(context.audio_span(trace, start, end), sample_rate=figures.SAMPLE_RATE)

    words = timed_words(trace, window)
    if words:
        st.subheader("Word timestamps")
        word_index = st.selectbox("Word", range(len(words)), key=word_key(window),
                                  format_func=lambda i: f"{words[i]['word'].strip()} "
                                                        f"({words[i]['start']:.2f}–{words[i]['end']:.2f} s)")
        word = words[word_index]
        st.audio(context.audio_span(trace, word["start"], word["end"]), sample_rate=figures.SAMPLE_RATE)
        shown = "" if len(trace.manifest.get("windows") or []) < 2 else f" of window {window + 1}"
        st.caption(f"{len(words)} words{shown}, timed by DTW on the alignment heads.")
        st.dataframe([{"word": w["word"], "start (s)": w["start"], "end (s)": w["end"], "window": int(w.get("window") or 0) + 1}
                      for w in words], hide_index=True)


def listening_step(trace, st, window: int):
    """Lesson: cross-attention, listening while writing."""
    from probe.dashboards import context

    long_form = len(trace.manifest.get("windows") or []) > 1
    this_window = f"window {window + 1}" if long_form else "this clip"
    st.markdown(f"Each decoder layer **cross-attends** to the 1500 encoder frames of {this_window}. A few heads "
                "follow the speech closely (the alignment heads); averaging them and walking the matrix with dynamic "
                "time warping gives every word a start and end time (boxes). In transformers the weights come from "
                "`model.generate(input_features, return_dict_in_generate=True, output_attentions=True)"
                ".cross_attentions` (per step, per layer: [batch, head, query, 1500]), and "
                "`model.generate(..., return_token_timestamps=True)` runs the same DTW on "
                "`model.generation_config.alignment_heads`.")
    return functools.partial(context.show_figure, trace, "cross_attention", window=window)

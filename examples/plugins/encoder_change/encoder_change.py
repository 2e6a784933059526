"""encoder_change: where in the audio Whisper's encoder sees something change.

For every 30 s window, the encoder hands the decoder one vector per 20 ms frame.  This plugin
measures how different each frame's vector is from the next one's (one minus their cosine
similarity) after one encoder block: peaks fall where the sound changes — word and phoneme
boundaries, the start and end of speech.  It shows every kind of thing a plugin can add:

- an option of ``probe run``: ``--change-layer N`` (which encoder block; default the last);
- records: ``encoder_change.change`` [window, frame] and ``encoder_change.peaks`` (table);
- a figure, ``encoder_change``: the change over time under the window's log-Mel spectrogram;
- a dashboard page, *Encoder change*, with the figure and the biggest changes to listen to;
- an export section, *Where the encoder sees change*, whose moments play when clicked.

It never imports torch itself (tensors arrive from the run and are reduced with their own
methods), so the dashboard and the export load it without torch.
"""

from __future__ import annotations

import numpy as np

from probe import figures, hookimpl

NAME = "encoder_change"
__version__ = "0.1.0"
CHANGE, PEAKS = f"{NAME}.change", f"{NAME}.peaks"
FRAMES_PER_SECOND = 50  # encoder frames: 20 ms each
TOP = 5  # biggest changes kept per window


# --------------------------------------------------------------------------- while tracing


@hookimpl
def probe_addoption(parser):
    parser.addoption("--change-layer", type=int, default=-1,
                     help="encoder block whose output is compared frame to frame (default: the last)")


@hookimpl
def probe_run_start(run):
    run.state[NAME] = {}  # window → change [frame], still on the device


@hookimpl
def probe_decode_points(run):
    layers = run.config.encoder_layers
    layer = run.option("change_layer", -1) % layers
    return [f"encoder.blocks.{layer}.hook_resid_post"]  # [batch, frame, d_model], once per window


@hookimpl
def probe_capture(run, point, tensor, ctx):
    frames = tensor[0, :ctx.n_frames].float()  # [frame, d_model]: the frames that hold audio
    a, b = frames[:-1], frames[1:]
    cosine = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-8)  # [frame - 1]
    run.state[NAME][ctx.window] = 1 - cosine


@hookimpl
def probe_run_end(run, writer):
    changes = run.state[NAME]
    if not changes:
        return
    rows = [changes[w].cpu().numpy() for w in sorted(changes)]
    width = max(len(row) for row in rows)
    matrix = np.full((len(rows), width), np.nan, dtype=np.float32)  # [window, frame]
    for index, row in enumerate(rows):
        matrix[index, :len(row)] = row
    layer = run.option("change_layer", -1) % run.config.encoder_layers
    writer.add_tensor(CHANGE, matrix, plugin=NAME, meta={"axes": ["window", "frame"], "encoder_block": layer})
    starts = {w.index: w.start for w in run.windows}
    peaks = [{"window": window, "time": round(starts.get(window, 0.0) + (frame + 1) / FRAMES_PER_SECOND, 2),
              "change": float(row[frame])}
             for window, row in zip(sorted(changes), rows) for frame in np.argsort(row)[::-1][:TOP]]
    writer.add_table(PEAKS, peaks, plugin=NAME)


# --------------------------------------------------------------------------- what it shows


@hookimpl
def probe_describe_records():
    return {CHANGE: {"dims": ["window", "frame"], "units": "1 - cosine similarity",
                     "description": "how much each 20 ms encoder frame differs from the next"},
            PEAKS: {"description": f"the {TOP} biggest changes of each window: window, time (s), change"}}


@figures.draws  # fonts that cover any script, as every figure
def change_figure(trace, window: int = 0):
    """The window's log-Mel spectrogram, and under it how much the encoder's frames change."""
    figures.require(trace, CHANGE)
    start, end = figures.window_span(trace, window)
    change = np.asarray(trace.tensor(CHANGE, lazy=True)[window], dtype=np.float32)  # [frame]
    change = change[~np.isnan(change)]
    mel = figures.log_mel_array(trace, window)[:, : int((end - start) * 100)]  # [n_mels, frame]
    fig = figures.new_figure(10, 5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1])
    figures.imshow(top, mel, (start, end, 0, mel.shape[0]), "magma")
    top.set_ylabel("Mel bin")
    top.set_title("log-Mel spectrogram", fontsize=10)
    times = start + (np.arange(len(change)) + 1) / FRAMES_PER_SECOND
    bottom.plot(times, change, color="tab:red", linewidth=0.8)
    bottom.set_xlabel("time in the clip (s)")
    bottom.set_ylabel("1 − cosine similarity")
    layer = (trace.records[CHANGE].get("meta") or {}).get("encoder_block", "?")
    bottom.set_title(f"How much encoder block {layer}'s output changes from one 20 ms frame to the next",
                     fontsize=10)
    return fig


@hookimpl
def probe_figures(register):
    register("encoder_change", change_figure, requires=CHANGE,
             caption="Encoder change: where the encoder's frames differ most from the next (sound boundaries).")


def change_page(trace, st):
    from probe.dashboards import context

    st.title("Encoder change")
    st.markdown("Peaks mark the 20 ms frames after which the encoder's representation changes most: "
                "usually where one sound ends and the next begins. Pick a moment to hear it.")
    window = context.pick_window(trace, "change_window")
    context.show_figure(trace, "encoder_change", window=window)
    peaks = [row for row in trace.table(PEAKS) if row["window"] == window]
    if peaks:
        moment = st.selectbox("Biggest changes", range(len(peaks)), key="change_moment",
                              format_func=lambda i: f"{peaks[i]['time']:.2f} s (change {peaks[i]['change']:.3f})")
        time = peaks[moment]["time"]
        st.audio(context.audio_span(trace, max(0.0, time - 0.3), time + 0.3), sample_rate=16000)


@hookimpl
def probe_dashboard_views(register):
    register("Encoder change", change_page, requires=(CHANGE, PEAKS), icon=":material/timeline:",
             section="Inside the model", window_key="change_window")


def change_section(trace, windows):
    rows = trace.table(PEAKS)
    if not rows:
        return ""
    cells = "".join(f'<tr><td class="num">{row["window"] + 1}</td><td><span data-start="{max(0, row["time"] - 0.3):.2f}" '
                    f'data-end="{row["time"] + 0.3:.2f}">▶ {row["time"]:.2f} s</span></td>'
                    f'<td class="num">{row["change"]:.3f}</td></tr>' for row in rows)
    return ('<p>The moments where the encoder\'s view of the sound changes most. Click one to hear it.</p>'
            f'<table><tr><th>window</th><th>time</th><th>change</th></tr>{cells}</table>')


@hookimpl
def probe_export_sections(register):
    register("Where the encoder sees change", change_section, requires=PEAKS, order=70,
             tables=lambda trace: {"encoder_change": trace.table(PEAKS)})

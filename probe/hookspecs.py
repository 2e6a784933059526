"""The plugin API: pluggy hook specifications every whisper-probe plugin implements a subset of.

A plugin is any module or object with functions decorated by :data:`hookimpl` whose names are
below.  The core calls them in this order for each traced input::

    probe_interventions (once, when the tracer is made)
    probe_run_start → probe_decode_points, probe_replay_points, probe_rejected_points → probe_estimate
      per window: probe_capture (for each requested hook point as it fires) → probe_window_end
    probe_run_end (write records) → probe_trace_metrics (scalars for the manifest's metrics)

``probe_addoption`` is called when options are collected (the CLI, ``probe.run``).  What a plugin
shows is declared by four more hooks, called by the dashboard, ``probe export`` and
:mod:`probe.figures` (never during a run), each with a ``register`` callback:

    probe_describe_records (names, dims and units of the records it writes)
    probe_figures (named figure functions over its records)
    probe_dashboard_views (pages in the dashboard's navigation)
    probe_export_sections (sections of the HTML export, tables of the json/csv export)
    probe_lesson_steps (steps of the dashboard's guided Lesson)

Two more are called by ``probe summary`` and the dashboard's Dataset view over a whole store:
``probe_summary_columns`` (columns of one trace's summary row) and ``probe_summary_reduce``
(results across the traces of a summary).

Everything registered may name the records it needs (``requires``): it is shown only for traces
that hold them, so a trace made with ``-p no:NAME`` shows nothing of that plugin and nothing
broken.  These hooks are called on plugins loaded without torch where a plugin allows it (see
:mod:`probe.contributions`).  Every call goes through pluggy
(:mod:`probe.plugin_manager`), so a plugin that raises is named in the error; a hook
implementation whose name is not below fails loudly when the plugin is registered.

API version: :data:`PROBE_API_VERSION`.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "whisper_probe"
PROBE_API_VERSION = "1.4"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def probe_addoption(parser):
    """Declare this plugin's options of ``probe run`` (pytest's ``pytest_addoption``).

    Call ``parser.addoption("--my-flag", type=float, default=0.5, help="...")`` with long flags
    and argparse's keyword arguments.  ``probe run --help`` lists them under the plugin's name;
    the value reaches the plugin as ``run.option("my_flag")`` (``dest``: the flag without dashes,
    ``-`` as ``_``).  From Python, ``probe.run(..., plugin_options={"my_flag": 0.7})``; an option
    not given has its declared default.  ``-p no:NAME`` removes the plugin's options too.

    :param parser: a :class:`probe.plugin_options.OptionParser`.

    .. versionadded:: 1.1
    """


@hookspec
def probe_interventions(config, options):
    """Return interventions the model runs under while this plugin is loaded (a list; None: none).

    Each is what ``probe.run(interventions=[...])`` takes (:mod:`probe.interventions`): most often a
    ``Replace(point, function, name=...)``, whose ``function(point, tensor)`` returns the tensor the
    model uses at that hook point instead (same shape) — the way to write an intervention of your
    own.  They are checked and applied like the user's (after them, before every capture hook),
    for every window, attempt and replay, and listed in the manifest's ``interventions``.

    :param config: the model's ``WhisperConfig`` (layers, heads, ``d_model``).
    :param options: every plugin option's value (``probe_addoption``), by ``dest``.

    .. versionadded:: 1.3
    """


@hookspec
def probe_run_start(run):
    """Called once per traced input before anything is decoded.

    Use it to read options (``run.options``, ``run.plugin_options``) and set up per-run state in
    ``run.state``.

    :param run: the :class:`probe.tracer.Run` being traced (model, tokenizer, options, audio).

    .. versionadded:: 1.0
    """


@hookspec
def probe_decode_points(run):
    """Hook points (names or glob patterns) this plugin wants to see during real decoding.

    Encoder points fire once per window (``ctx.phase == "encode"``); decoder points fire on every
    generation step (``ctx.phase == "decode"``) with the beams on the batch axis.  Only points some
    plugin asks for are hooked.

    :param run: the current run.
    :return: a list of hook-point names or glob patterns, or ``None``.

    .. versionadded:: 1.0
    """


@hookspec
def probe_replay_points(run):
    """Decoder hook points this plugin wants to see on the *replay* of each window's final tokens.

    After a window is decoded, its chosen token sequence is run once more through the decoder,
    teacher-forced (as openai-whisper's ``timing.py`` does), so per-token records follow the
    hypothesis that won — also under beam search.  Captures come with ``ctx.phase == "replay"``;
    the query axis covers all of ``ctx.tokens``: position ``q`` emitted token ``q + 1``, so the
    generated tokens were emitted by positions ``ctx.prompt_length - 1`` to ``len(ctx.tokens) - 2``
    (the last position emits nothing).  Windows decoded together are replayed together: read only
    the first ``len(ctx.tokens)`` positions (shorter sequences are padded at the end).

    :param run: the current run.
    :return: a list of hook-point names or glob patterns, or ``None``.

    .. versionadded:: 1.0
    """


@hookspec
def probe_rejected_points(run):
    """Decoder hook points this plugin wants to see on the replay of each *rejected* attempt.

    When temperature fallback rejects an attempt (compression ratio or average log-probability),
    its tokens are teacher-forced through the decoder once, as the kept attempt's are, so a plugin
    can keep what the model did on the attempt Whisper threw away ("why did it retry here?").
    Captures come with ``ctx.phase == "rejected"``, ``ctx.window``, ``ctx.attempt`` and
    ``ctx.temperature`` of that attempt, and ``ctx.tokens`` / ``ctx.prompt_length`` as in the
    replay.  Only plugins that implement this hook see these captures; the attempt's record in
    ``window.attempts`` (``probe_window_end``) has the same ``index``.

    :param run: the current run.
    :return: a list of decoder hook-point names or glob patterns, or ``None``.

    .. versionadded:: 1.1
    """


@hookspec
def probe_capture(run, point, tensor, ctx):
    """A requested hook point fired.  Called only for points this plugin asked for.

    Keep it cheap: it runs inside the model's forward pass.  Never synchronise with the device
    here (no ``.item()``, ``.cpu()``, ``print(tensor)``); reduce on the device and keep the result.

    :param run: the current run.
    :param point: the :class:`probe.points.HookPoint` that fired (``point.name``, ``point.shape``).
    :param tensor: the detached tensor, shaped as ``point.shape`` says, on the model's device.
    :param ctx: the :class:`probe.tracer.CaptureContext`: ``phase``, ``window``, ``step``
        (decoder call within the window, 0 = the prompt), ``num_beams``, ``tokens`` (replay only).

    .. versionadded:: 1.0
    """


@hookspec
def probe_window_end(run, window):
    """A window has been decoded (and replayed).

    :param run: the current run.
    :param window: the :class:`probe.tracer.WindowResult`: index, start/end seconds, prompt,
        tokens, text, language probabilities, no-speech probability, encoder frame count.

    .. versionadded:: 1.0
    """


@hookspec
def probe_run_end(run, writer):
    """Every window is done: write this plugin's records.

    :param run: the current run (``run.windows`` holds every :class:`~probe.tracer.WindowResult`).
    :param writer: the :class:`probe.store.TraceWriter` of the trace being written; use
        ``writer.add_tensor(name, array, plugin=...)``, ``add_table`` or ``add_json``.  Record names
        start with the plugin name (``"my_plugin.stat"``).  Nothing is visible in the store until
        every plugin has returned.

    .. versionadded:: 1.0
    """


@hookspec
def probe_estimate(run):
    """How many bytes this plugin's records will take for this run, before anything is decoded.

    Used by ``probe run --dry-run`` and to refuse a capture that would not fit in memory.  Token
    counts are not known yet: use ``run.expected_tokens`` (an upper estimate per window).

    :param run: the current run (hook points already resolved).
    :return: a dict mapping record names to byte counts, or ``None``.

    .. versionadded:: 1.0
    """


@hookspec
def probe_describe_records():
    """Describe the records this plugin writes, for generic views and axis labels.

    :return: a dict mapping a record name (or a glob pattern such as
        ``"my_plugin.layer_*"``) to a dict with any of ``dims`` (the axis names, e.g.
        ``["layer", "head", "token", "frame"]``), ``units`` (of the values, e.g. ``"probability"``)
        and ``description`` (one sentence); or ``None``.  The records browser labels sliders and
        axes with ``dims``; a record's own ``meta["axes"]`` (given to ``writer.add_tensor``) wins.
        Two optional keys let the core read a record without knowing its name: ``"role":
        "words"`` marks the word timings :meth:`probe.store.Trace.words` returns (a JSON list of
        ``{"word", "start", "end", "window"}``), and ``"token_columns": [["id_col", "text_col"],
        ...]`` marks a table's token ids and their texts, which every figure uses to label tokens
        (:func:`probe.figures.vocabulary`).

    .. versionadded:: 1.2
    """


@hookspec
def probe_figures(register):
    """Add named figures over this plugin's records.

    :param register: call ``register(name, function, caption="...", requires=("my_plugin.stat",))``.  ``function``
    takes the :class:`probe.store.Trace` (plus keyword choices with defaults) and returns a
    matplotlib :class:`~matplotlib.figure.Figure` (build it with :func:`probe.figures.new_figure`,
    not pyplot).  A figure with a ``window`` parameter shows one 30 s window (the export draws it
    per window); one with an ``attempt`` parameter shows a rejected attempt (the *Windows* view
    draws it inside that attempt).  The dashboard (``context.show_figure(trace, name)``), every
    export format and ``probe.figures.FIGURES[name](trace)`` draw the same function.

    .. versionadded:: 1.2
    """


@hookspec
def probe_dashboard_views(register):
    """Add pages to the dashboard's navigation.

    :param register: call ``register(title, render, requires=(...), icon=":material/...:",
        section="Plugins", window_key=None)``; ``render(trace, st)`` draws with the Streamlit module
        ``st`` for the :class:`probe.store.Trace` picked in the sidebar.  A page that shows one 30 s
        window at a time names the session-state key of its window picker (``window_key``, e.g. the
        ``key`` given to ``probe.dashboards.context.pick_window``), so the *Windows* page can open
        it at a window.  The page is listed only while the picked
        trace holds every record in ``requires``; an exception in ``render`` is shown in the page,
        naming the plugin.

    .. versionadded:: 1.0
    .. versionchanged:: 1.2 a page of its own in the navigation; ``requires``, ``icon``, ``section``.
    """


@hookspec
def probe_export_sections(register):
    """Add sections to the HTML export and tables to the json/csv exports.

    :param register: call ``register(title, render, requires=(...), order=50, tables=None,
        replaces=(), id="")``.  ``render(trace, windows)`` returns the section's inner HTML (escape what
        you insert; ``windows`` are the 0-based windows the export draws); ``None`` or ``""`` leaves the
        section out.  ``tables(trace)`` returns ``{table_name: [row dict, ...]}`` for the json and
        csv exports.  ``order`` places the section: the core's *Listen* section is 0, *Prompt* 20,
        *Windows* 40, figures 60.  ``replaces=("transcript",)`` takes the place of the core's plain
        transcript under the player (rendered there, not as a section of its own).  ``id``: the
        section's HTML id (default: made from the title).

    .. versionadded:: 1.2
    """


@hookspec
def probe_lesson_steps(register):
    """Add steps to the dashboard's Lesson (a guided walk through one trace).

    :param register: call ``register(title, explain, requires=(...), order=50)``.
        ``explain(trace, st, window)`` writes the step's text with ``st`` and returns a function of
        no arguments that draws the step's picture (or ``None``); ``window`` is the 0-based window
        the lesson shows.  The core's steps are the sound (10), the log-Mel spectrogram (20) and the
        prompt (50).

    .. versionadded:: 1.2
    """


@hookspec
def probe_trace_metrics(run):
    """Scalars this plugin measured for the run, kept in the manifest's ``metrics`` (beside WER/CER,
    average log-probability, compression ratio, no-speech and language probability and duration),
    so ``probe summary`` and the Dataset view list them per trace without opening any record.

    Called after ``probe_run_end``, on the same thread.

    :param run: the finished run.
    :return: a dict mapping names (start them with the plugin name: ``"my_plugin.sharpness"``) to
        ints, floats or bools (None for "not measured"), or ``None``.

    .. versionadded:: 1.4
    """


@hookspec
def probe_summary_columns(trace):
    """Columns this plugin adds to ``trace``'s row of a store summary (``probe summary``, the
    dashboard's Dataset view).  Rows are kept in the store's summary index, so this is called once
    per trace (again only when the trace or the set of plugins changes), not on every look.

    :param trace: a :class:`probe.store.Trace` (read its manifest or records).
    :return: a dict mapping column names (start them with the plugin name) to scalars (str, int,
        float, bool or None), or ``None``.

    .. versionadded:: 1.4
    """


@hookspec
def probe_summary_reduce(table):
    """Results across the traces of a summary, e.g. a per-head alignment sharpness averaged over a
    dataset: shown under the summary table and in its JSON/HTML.

    :param table: a ``pandas.DataFrame``, one row per trace (after ``--where`` filtering), with the
        columns ``probe summary`` lists, the ones plugins added included.
    :return: a dict mapping result names to JSON-able values (numbers, strings, lists, dicts), or ``None``.

    .. versionadded:: 1.4
    """

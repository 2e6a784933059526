"""The ``probe`` command line.

Subcommands: ``run`` (trace audio into the store, :mod:`.run`), ``points`` (list hook points with
shapes), ``plugins`` (list plugins and their hooks), ``ls`` / ``show`` / ``rm`` (browse the store),
``summary`` (one row per trace of a store, :mod:`.summary`), ``convert`` (CTranslate2 or
openai-whisper checkpoint → transformers directory), ``dashboard``,
``export`` and ``import`` (:mod:`.commands`), ``sweep`` (one intervention family over a clip set,
:mod:`.sweep`), ``heads --alignment`` (rank cross-attention heads for word timing); the grammar is :mod:`.parser`.  A user mistake prints
one line, ``probe: error: ...``, and exits 2; ``--debug`` shows the traceback.  Ctrl-C exits 130
with nothing half-written.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import sys

from probe.cli.commands import (cmd_convert, cmd_dashboard, cmd_export, cmd_heads, cmd_import, cmd_ls,
                                 cmd_plugins, cmd_points, cmd_rm, cmd_show)
from probe.cli.parser import build_parser
from probe.cli.run import cmd_run
from probe.cli.summary import cmd_summary
from probe.cli.sweep import cmd_sweep
from probe.errors import ProbeError

DEBUG_ENV = "WHISPER_PROBE_DEBUG"


COMMANDS = {"run": cmd_run, "points": cmd_points, "plugins": cmd_plugins, "ls": cmd_ls, "show": cmd_show,
            "rm": cmd_rm, "convert": cmd_convert, "dashboard": cmd_dashboard, "export": cmd_export,
            "import": cmd_import, "sweep": cmd_sweep, "heads": cmd_heads, "summary": cmd_summary}


def plugin_refs(argv: list[str]) -> list[str]:
    """The ``-p`` values of a ``probe run`` command line (``--no-store`` disables the built-ins), read
    before parsing so that the plugins' own options (``probe_addoption``) can be parsed and listed."""
    from probe.plugin_manager import DEFAULT_PLUGINS

    refs, tokens = [], iter(argv)
    for token in tokens:
        if token == "--":
            break
        if token == "-p":
            refs.append(next(tokens, ""))
        elif token.startswith("-p") and not token.startswith("--"):
            refs.append(token[2:].lstrip("="))
    if "--no-store" in argv:
        refs += [f"no:{name}" for name in DEFAULT_PLUGINS if f"no:{name}" not in refs]
    return refs


def _with_plugin_options(parser: argparse.ArgumentParser, argv: list[str]):
    """For ``probe run``: the plugin manager of its ``-p`` options, and its plugins' options added to
    the ``run`` parser."""
    from probe.plugin_manager import get_plugin_manager
    from probe.plugin_options import collect_options

    pm = get_plugin_manager(plugins=plugin_refs(argv))
    options = collect_options(pm)
    options.add_to(parser.run_parser)
    return pm, options


def main(argv=None) -> int:
    if argv is None:  # the program itself (not a test or a script calling main with arguments)
        # At exit, leave what the command made to the operating system instead of collecting it
        # object by object: a fifth of a second after an export, for nothing.
        atexit.register(gc.freeze)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    debug = "--debug" in argv or bool(os.environ.get(DEBUG_ENV))
    try:
        pm = options = None
        if next((token for token in argv if not token.startswith("-")), None) == "run":
            pm, options = _with_plugin_options(parser, argv)
        args = parser.parse_args(argv)
        args.plugin_manager, args.plugin_options = pm, options
        args.plugin_refs = plugin_refs(argv) if pm is not None else []
        debug = args.debug or debug
        return COMMANDS[args.command](args)
    except ProbeError as exc:
        if debug:
            raise
        print(f"probe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("probe: interrupted; nothing was written for the unfinished input", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

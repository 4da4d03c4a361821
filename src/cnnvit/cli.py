"""The ``cnnvit`` command: one subcommand per pipeline stage, plus the tools around them.

    cnnvit download|prepare|corrupt|train|evaluate|cost|collect|figures|report \
        |plan|status|bench|dvc-yaml|snakemake-rules|stages|schema [--params FILE] [--set k=v ...]

The stage subcommands and their help lines are the stages' declarations (``STAGE`` in each
``cnnvit/stages/<name>.py``, read without importing the stages: :mod:`cnnvit.dag.declared`);
only the module of the subcommand being run is imported, so ``cnnvit <cmd> --help`` stays fast.

Every subcommand loads params.yaml through :mod:`cnnvit.config.load` (``--set`` applies dotted
overrides first) and takes every path as an argument, defaulting to the paths of
:mod:`cnnvit.paths`, each checked for its role before anything runs (:mod:`cnnvit.arguments`).
A :class:`~cnnvit.errors.CnnvitError` ends the command with one ``error:`` line and exit status 1.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys

from cnnvit.dag.declared import declared
from cnnvit.errors import CnnvitError, raise_on_signals

TOOLS = {
    "plan": ("plan", "the runs' PFLOP, a measured step per model, and a forecast of the wall time here"),
    "status": ("dag.status", "which runs train and evaluate would (re)do, and why (for either tool)"),
    "bench": ("training.bench", "throughput of the trainer's step vs a bare loop"),
    "dvc-yaml": ("dag.dvc", "write dvc.yaml from the stages' declarations"),
    "snakemake-rules": ("dag.rules", "write the Snakemake rules from the stages' declarations"),
    "stages": ("dag.check", "the stages as declared; --check: each declaration against its stage's code"),
    "schema": ("config.schema", "write params.schema.json from the typed config"),
}


@functools.cache
def commands() -> dict[str, tuple[str, str]]:
    """subcommand -> (module with add_args() and run(args, params), help): the stages, then the tools."""
    return {name: (f"stages.{name}", stage.help) for name, stage in declared().items()} | TOOLS


def __getattr__(name: str):
    if name == "COMMANDS":  # read when asked, inside main's one-line errors (a broken declaration)
        return commands()
    raise AttributeError(name)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnvit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in commands().items():
        p = sub.add_parser(name, help=help_)
        if name not in argv:
            continue  # importing every stage (torch, timm, seaborn) would cost seconds a call
        p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a dotted params key, e.g. --set data.url=/path/x.tar.gz",
        )
        importlib.import_module(f"cnnvit.{module}").add_args(p)
    return parser


def whole_lines() -> None:
    """One write per line: under PYTHONUNBUFFERED (Snakemake's jobs, CI) print() writes a line's
    text and its newline apart, and two jobs writing to one terminal or log run their lines together."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "write_through", False) and hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True, write_through=False)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as the command (not by a caller that owns the streams, a test's capture)
        whole_lines()
    argv = sys.argv[1:] if argv is None else argv
    raise_on_signals()
    try:  # everything, imports included: a Ctrl-C at any moment ends in one line
        args = build_parser(argv).parse_args(argv)  # a declaration the DAG cannot read is one line too
        from cnnvit.arguments import check_paths
        from cnnvit.config.load import load_params
        from cnnvit.dag.tool_lock import refuse_if_the_other_tool_runs

        refuse_if_the_other_tool_runs()
        check_paths(args.command, args)
        params = load_params(args.params, args.overrides)
        module = importlib.import_module(f"cnnvit.{commands()[args.command][0]}")
        if getattr(args, "all_runs", False):  # DVC's one job of a per-run stage: say first what it redoes
            from cnnvit.dag.status import print_stage_status

            print_stage_status(args.command, args, params)
        module.run(args, params)
    except CnnvitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        why = f" ({exc})" if str(exc) else ""
        print(f"error: interrupted{why}; nothing half-written was left: run the same command again", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

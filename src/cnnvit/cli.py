"""The ``cnnvit`` command: one subcommand per pipeline stage.

    cnnvit download|prepare|train|collect|figures|report|bench [--params FILE] [--set k=v ...]

Every subcommand loads params.yaml through :mod:`cnnvit.config` (``--set`` applies dotted
overrides first) and takes every path as an argument. A :class:`~cnnvit.errors.CnnvitError`
ends the command with one ``error:`` line and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cnnvit.config import load_config
from cnnvit.errors import CnnvitError

# subcommand -> (module, add-arguments function, run function, help)
COMMANDS = {
    "download": ("data", "add_download_args", "run_download", "fetch and verify the archive"),
    "prepare": ("data", "add_prepare_args", "run_prepare", "archive -> train/test .npz + stats"),
    "train": ("train", "add_args", "run", "train one model/recipe/seed run"),
    "collect": ("collect", "add_args", "run", "per-run metrics -> tidy tables"),
    "figures": ("figures", "add_args", "run", "tables -> PNG figures"),
    "report": ("report", "add_args", "run", "tables + figures -> report/index.html"),
    "bench": ("bench", "add_args", "run", "throughput of trainer vs bare loop"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnvit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, add_args, _, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if name not in argv:
            continue  # importing every stage (torch, timm, seaborn) would cost ~10 s a call
        p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a dotted params key, e.g. --set data.url=/path/x.tar.gz",
        )
        getattr(importlib.import_module(f"cnnvit.{module}"), add_args)(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    module, _, run, _ = COMMANDS[args.command]
    try:
        cfg = load_config(args.params, args.overrides)
        getattr(importlib.import_module(f"cnnvit.{module}"), run)(args, cfg)
    except CnnvitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

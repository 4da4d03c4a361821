"""``cnnvit stages``: the stages as declared; ``--check`` holds each declaration against its code.

    cnnvit stages            # each stage: its command, inputs, outputs and the params it reads
    cnnvit stages --check    # each declared command parsed by its stage's own parser (CI runs it)

A declaration (``STAGE`` in ``cnnvit/stages/<name>.py``) and its module can drift apart: a renamed
option, an output moved in the code but not in the declaration. ``--check`` imports every stage
module and, for each, parses the declared command with the parser the stage builds
(``add_args``): the command must be ``cnnvit <name>``, take only options the parser takes
(for a per-run stage, with the options of one batch and of every run in place of ``{runs}``),
each declared output must be one of the files or inside one of the folders its output options
name (a per-run output inside a run's folder there), and each declared input, and each output of
another stage it reads, one of its input options' files or folders. The first disagreement ends
the command in one line naming the stage and the option or path. What a stage writes where its
options say is checked by running it: tests/test_stage_params.py runs every stage and finds each
declared output.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
from pathlib import PurePosixPath

from cnnvit.arguments import IN_ANY, IN_DIR, IN_FILE, OUT_DIR, OUT_FILE, role
from cnnvit.errors import CnnvitError
from cnnvit.stage import RUN, RUNS, Stage

# What a per-run stage's {runs} stands for: the options of one batch, and of every run
EXAMPLE_RUNS = ("--model m --recipe r --seeds 0 1", "--all-runs --workers auto")
EXAMPLE_RUN = "m-r-s0"  # a run's name, in place of {run}


class _Refused(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print and exit
        raise _Refused(message)


def where(stage: Stage) -> str:
    return f"fix STAGE in src/cnnvit/stages/{stage.name}.py or the stage's add_args()"


def parsed(stage: Stage, runs: str) -> tuple[argparse.Namespace, dict[str, str]]:
    """The declared command parsed by the stage's own parser, and each option's flag by its dest."""
    parser = _Parser(prog=f"cnnvit {stage.name}", add_help=False)
    importlib.import_module(stage.module).add_args(parser)
    words = shlex.split(stage.cmd.replace(RUNS, runs))
    if words[:2] != ["cnnvit", stage.name]:
        raise CnnvitError(
            f"stage {stage.name}: its declared command runs `{' '.join(words[:2])}`, "
            f"not `cnnvit {stage.name}`: {where(stage)}"
        )
    try:
        args, unknown = parser.parse_known_args(words[2:])
    except _Refused as exc:
        raise CnnvitError(
            f"stage {stage.name}: its declared command is refused by its parser ({exc}): {where(stage)}"
        ) from None
    if unknown:
        raise CnnvitError(
            f"stage {stage.name}: its declared command names {unknown[0]}, which `cnnvit {stage.name}` "
            f"does not take: {where(stage)}"
        )
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    return args, flags


def _inside(path: str, places: dict[str, tuple[str, str]]) -> bool:
    p = PurePosixPath(path.replace(RUN, EXAMPLE_RUN))
    for value, kind in places.values():
        base = PurePosixPath(value)
        if p == base or (kind in (IN_DIR, OUT_DIR, IN_ANY) and base in p.parents):
            return True
    return False


def check(stage: Stage, stages: dict[str, Stage]) -> None:
    """One line naming the stage and the option or path where its declaration and its code disagree."""
    for runs in EXAMPLE_RUNS if stage.per_run else ("",):
        args, flags = parsed(stage, runs)
        given = {dest: str(v) for dest, v in vars(args).items() if isinstance(v, str)}
        kinds = {dest: role(stage.name, dest) for dest in given}
        outs = {flags[d]: (v, k) for d, v in given.items() if (k := kinds[d]) in (OUT_FILE, OUT_DIR)}
        ins = {flags[d]: (v, k) for d, v in given.items() if (k := kinds[d]) in (IN_FILE, IN_DIR, IN_ANY)}
        for o in stage.outs:
            if not _inside(o.path, outs):
                named = ", ".join(f"{f} {v}" for f, (v, _) in outs.items()) or "no output option"
                raise CnnvitError(
                    f"stage {stage.name}: it declares the output {o.path}, which is not where its command "
                    f"writes ({named}): {where(stage)}"
                )
        read = [*stage.deps, *(o.path for other in stage.reads_all_runs for o in stages[other].outs)]
        for path in read:
            if not _inside(path, ins):
                named = ", ".join(f"{f} {v}" for f, (v, _) in ins.items()) or "no input option"
                raise CnnvitError(
                    f"stage {stage.name}: it declares the input {path}, which its command does not read "
                    f"({named}): {where(stage)}"
                )


def add_args(p) -> None:
    p.add_argument("--check", action="store_true", help="hold each declaration against its stage's parser")


def run(args, params) -> None:
    from cnnvit.dag.declared import declared

    stages = declared()
    for stage in stages.values():
        if args.check:
            check(stage, stages)
            continue
        print(f"{stage.name}: {stage.help}\n  $ {stage.cmd}")
        every = "".join(f" + every run of {s}" for s in stage.reads_all_runs)
        print(f"  reads   {', '.join(stage.deps) or '-'}{every}")
        print(f"  writes  {', '.join(o.path for o in stage.outs)}")
        print(f"  params  {', '.join(stage.params + stage.fraction_params) or '-'}")
    if args.check:
        print(f"the {len(stages)} stages' declarations agree with their parsers")

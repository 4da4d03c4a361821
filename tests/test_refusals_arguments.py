"""Careless command lines (issue 28): one guard for every path argument of every command (the
wrong kind of path, a place nothing can be written, a link checked where it points), seeds that
the generators cannot take, a thread count below one, and prepared data that is not where the
command looks: each one line."""

from __future__ import annotations

import os
import re

import pytest
from conftest import assert_one_line_error, make_cifar_python, md5, run_cli, tiny_params

from cnnvit import arguments
from cnnvit.cli import COMMANDS, build_parser, main
from cnnvit.errors import CnnvitError

# ----------------------------------------------------------------------------- paths


def all_actions():
    parser = build_parser(list(COMMANDS))
    sub = next(a for a in parser._actions if a.dest == "command")
    for command, p in sub.choices.items():
        for action in p._actions:
            yield command, action


def test_every_argument_of_every_command_is_a_path_with_a_role_or_listed_as_not_one():
    """One guard for every path argument: a new one cannot miss it unnoticed."""
    seen = {(c, a.dest) for c, a in all_actions()}
    assert len(seen) > 60
    unclassified = sorted((c, d) for c, d in seen if arguments.role(c, d) is None and d not in arguments.NOT_PATHS)
    assert not unclassified, unclassified


def path_cases(tmp_path):
    a_file, a_dir = tmp_path / "a_file", tmp_path / "a_dir"
    a_file.write_text("x")
    a_dir.mkdir(exist_ok=True)
    return {
        arguments.IN_FILE: (str(a_dir), "is a folder, not a file"),
        arguments.IN_DIR: (str(a_file), "is a file, not a folder"),
        arguments.OUT_FILE: (str(a_dir), "is a folder: give a file name"),
        arguments.OUT_DIR: (str(a_file), "is a file, not a folder"),
    }


def test_every_path_argument_of_every_command_refuses_the_wrong_kind_in_one_line(tmp_path, capsys):
    """Issue 28: --params at a directory was IsADirectoryError, --ckpt-dir at a file a traceback
    from the run lock. Each path argument of each command, given the wrong kind of path."""
    cases, tried = path_cases(tmp_path), 0
    required: dict[str, list] = {}
    for command, action in all_actions():
        required.setdefault(command, []).extend([action] if action.required and action.option_strings else [])
    for command, action in all_actions():
        kind = arguments.role(command, action.dest)
        if kind not in cases or not action.option_strings:
            continue
        value, needle = cases[kind]
        argv = [command, action.option_strings[0], value]
        for other in required[command]:
            if other.dest != action.dest:
                argv += [other.option_strings[0], str(tmp_path / f"{other.dest}.out")]
        if command in ("train", "evaluate"):
            argv += ["--model", "vit", "--recipe", "paper"]
        code = main(argv)
        assert_one_line_error(code, capsys.readouterr().err, action.option_strings[0], needle)
        tried += 1
    assert tried > 25


def test_an_output_under_a_file_or_where_nothing_can_be_written_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CnnvitError, match=r"--ckpt-dir .*f/ck cannot be created: .*f is a file"):
        arguments.check_path("--ckpt-dir", str(tmp_path / "f/ck"), arguments.OUT_DIR)
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access  # as root, permissions do not stop a write: emulate what a user meets
    monkeypatch.setattr(arguments.os, "access", lambda p, mode: False if str(p) == str(ro) else real(p, mode))
    with pytest.raises(CnnvitError, match=r"--ckpt-dir .*ro: cannot write in .*ro \(permission denied\)"):
        arguments.check_path("--ckpt-dir", str(ro), arguments.OUT_DIR)
    with pytest.raises(CnnvitError, match=r"--out .*ro/x.csv: cannot write in .*ro"):
        arguments.check_path("--out", str(ro / "x.csv"), arguments.OUT_FILE)
    arguments.check_path("--ckpt-dir", str(tmp_path / "new/deeper"), arguments.OUT_DIR)  # made on demand
    for bad in ("", "a\0b"):
        with pytest.raises(CnnvitError, match="not a path"):
            arguments.check_path("--out", bad, arguments.OUT_FILE)


def test_a_linked_output_folder_is_checked_where_it_points(tmp_path, monkeypatch):
    """A link is written through (cnnvit.files), so what counts is the folder it points into: a
    link to a folder, or dangling into one that can be made, is taken; a link from a writable
    folder into one nothing can be written in, or to a place under a file, is one line."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "tables").symlink_to(tmp_path / "elsewhere")
    arguments.check_path("--out-dir", str(tmp_path / "tables"), arguments.OUT_DIR)
    (tmp_path / "dangling").symlink_to(tmp_path / "not-yet/tables")
    arguments.check_path("--out-dir", str(tmp_path / "dangling"), arguments.OUT_DIR)
    (tmp_path / "results").mkdir()  # writable, holding links that point elsewhere
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access  # as root, permissions do not stop a write: emulate what a user meets
    monkeypatch.setattr(arguments.os, "access", lambda p, mode: False if str(p) == str(ro) else real(p, mode))
    (tmp_path / "results/tables").symlink_to(ro / "tables")
    with pytest.raises(CnnvitError, match=rf"results/tables: cannot write in {re.escape(str(ro))} \(permission denied"):
        arguments.check_path("--out-dir", str(tmp_path / "results/tables"), arguments.OUT_DIR)
    (tmp_path / "f").write_text("x")
    (tmp_path / "results/figures").symlink_to(tmp_path / "f/figures")
    with pytest.raises(
        CnnvitError, match=rf"results/figures cannot be created: {re.escape(str(tmp_path / 'f'))} is a file"
    ):
        arguments.check_path("--out-dir", str(tmp_path / "results/figures"), arguments.OUT_DIR)


def test_run_from_elsewhere_names_the_missing_prepared_data(tmp_path, capsys):
    archive = make_cifar_python(tmp_path / "c.tar.gz")
    argv = ["train", "--model", "vit", "--recipe", "paper", "--data-dir", str(tmp_path / "nowhere")]
    code, err = run_cli(tmp_path, capsys, argv, tiny_params(str(archive), md5(archive)))
    assert_one_line_error(code, err, f"no prepared data at {tmp_path / 'nowhere'}", "run from the project root")


# ----------------------------------------------------------------------------- seeds and threads


@pytest.mark.parametrize(
    "seeds, needle",
    [(["4294967296"], "outside 0..4,294,967,295"), (["-1"], "outside 0..4,294,967,295"), (["x"], "not a whole")],
)
def test_a_seed_outside_what_the_generators_take_is_refused_by_argparse(capsys, seeds, needle):
    """--seed -1 said "prepared/train.npz is corrupt", sending users to delete good data; 2**32 was
    a traceback."""
    for command in ("train", "evaluate"):
        with pytest.raises(SystemExit) as e:
            main([command, "--model", "vit", "--recipe", "paper", "--seeds", *seeds])
        assert e.value.code == 2 and needle in capsys.readouterr().err


def test_a_seed_given_twice_is_refused_not_blamed_on_another_process(prepared, tmp_path, capsys):
    archive, data = prepared
    argv = ["train", "--model", "vit", "--recipe", "paper", "--seeds", "0", "0", "--workers", "2"]
    argv += ["--data-dir", str(data), "--runs-dir", str(tmp_path / "r"), "--ckpt-dir", str(tmp_path / "c")]
    code, err = run_cli(tmp_path, capsys, argv, tiny_params(str(archive), md5(archive), epochs=1, recipes=["paper"]))
    assert_one_line_error(code, err, "--seeds lists 0 more than once", "give each seed once")
    assert "another process" not in err


def test_a_threads_count_below_one_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "vit", "--recipe", "paper", "--threads", "-1"])
    assert e.value.code == 2 and "-1 is less than 1" in capsys.readouterr().err

"""The one reader of the CSV tables stages hand each other: columns, types and finite values
checked, or one line naming the file.

    df = read_table("results/evaluation/vit-paper-s0/robustness.csv",
                    {"corruption": "str", "severity": "int", "acc": "float"},
                    fix="run `cnnvit evaluate` for vit-paper-s0 again")

A column's kind is ``str`` (non-empty text), ``int`` (whole numbers), ``float`` (finite numbers),
``float?`` (finite numbers or empty cells) or ``bool`` (True/False). Columns not named are kept
as pandas reads them. Every failure is a :class:`~cnnvit.errors.CnnvitError` naming the file, the
column and the line (the header is line 1), and ending in ``fix``: a missing file, a folder in its
place, bytes that are not CSV or not UTF-8, a missing column, fewer than ``min_rows`` rows (a
header alone), a cell of the wrong type, NaN or an infinity.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cnnvit.errors import CnnvitError, first_line

KINDS = ("str", "int", "float", "float?", "bool")


def read_table(
    path: str | Path, columns: Mapping[str, str], *, fix: str, min_rows: int = 1, missing: str | None = None
) -> pd.DataFrame:
    """The table at ``path`` with ``columns`` (name -> kind) checked and converted; ``missing`` is
    the fix for a file that is not there (default ``fix``)."""
    path = Path(path)
    unknown = sorted(set(columns.values()) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown column kinds {unknown}; use {KINDS}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise CnnvitError(f"{path} not found: {missing or fix}") from None
    except IsADirectoryError:
        raise CnnvitError(f"{path} is a folder, not a table: {fix}") from None
    except pd.errors.EmptyDataError:
        raise CnnvitError(f"{path} is empty (not even a header): {fix}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise CnnvitError(f"{path} is not a readable CSV table ({first_line(exc, 100)}): {fix}") from None
    except OSError as exc:
        raise CnnvitError(f"cannot read {path} ({exc.strerror or type(exc).__name__}): {fix}") from None
    absent = [c for c in columns if c not in df.columns]
    if absent:
        has = ", ".join(map(str, df.columns[:8])) + (", ..." if len(df.columns) > 8 else "")
        raise CnnvitError(f"{path} has no column {', '.join(absent)} (it has {has or 'none'}): {fix}")
    if len(df) < min_rows:
        what = "only a header" if len(df) == 0 else f"{len(df)} rows"
        raise CnnvitError(f"{path} has {what}, fewer than the {min_rows} rows it must have: {fix}")
    for name, kind in columns.items():
        df[name] = _column(df[name], kind, path, name, fix)
    return df


def _bad(path: Path, name: str, row: int, value: str, why: str, fix: str) -> CnnvitError:
    shown = value if len(value) <= 40 else value[:37] + "..."
    return CnnvitError(f"{path}: column {name}, line {row + 2}: {shown!r} {why}: {fix}")


def _column(raw: pd.Series, kind: str, path: Path, name: str, fix: str) -> pd.Series:
    text = raw.str.strip()
    empty = text == ""
    if kind == "str":
        if empty.any():
            row = int(np.flatnonzero(empty)[0])
            raise _bad(path, name, row, "", "is empty", fix)
        return text
    if kind == "bool":
        lowered = text.str.lower()
        ok = lowered.isin(["true", "false"])
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise _bad(path, name, row, raw.iloc[row], "is not True or False", fix)
        return lowered == "true"
    values = pd.to_numeric(text.where(~empty), errors="coerce")
    unread = values.isna() & ~empty & ~text.str.lower().isin(["nan", "-nan", "+nan"])
    if unread.any():
        row = int(np.flatnonzero(unread)[0])
        raise _bad(path, name, row, raw.iloc[row], "is not a number", fix)
    blank = values.isna()
    if blank.any() and kind != "float?":
        row = int(np.flatnonzero(blank)[0])
        raise _bad(path, name, row, raw.iloc[row], "is not a finite number" if raw.iloc[row] else "is empty", fix)
    finite = np.isfinite(values.to_numpy(dtype=float)) | blank.to_numpy()
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise _bad(path, name, row, raw.iloc[row], "is not a finite number", fix)
    if kind == "int":
        whole = values == values.round()
        if not whole.all():
            row = int(np.flatnonzero(~whole)[0])
            raise _bad(path, name, row, raw.iloc[row], "is not a whole number", fix)
        return values.astype(np.int64)
    return values.astype(float)

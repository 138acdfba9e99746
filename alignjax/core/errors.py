"""How a command-line entry point reports a failure: a user's mistake in one line, a bug with its traceback.

This module imports nothing from alignjax, so every layer (and every sub-command's `main`) can use it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class MissingDependencyError(ImportError):
    """An optional package a requested feature needs is not installed; the message says what to install
    or which setting to drop. An ImportError still, so callers that catch ImportError keep working."""


# What the user can fix from the message alone: a config value, a record, a flag
# (ValueError, which covers configlib.ConfigError, data.records.DataError and
# json.JSONDecodeError), a path that does not exist, an optional package to install.
# Anything else (KeyError, TypeError, AttributeError, AssertionError, ...) is a bug in
# alignjax: hiding its traceback behind `error: 'x'` would leave no way to find it.
USER_ERRORS = (ValueError, FileNotFoundError, MissingDependencyError)


def run_command(name: str, fn: Callable[..., int], *args: Any) -> int:
    """`fn(*args)`, with a user error (`USER_ERRORS`) turned into the line
    `alignjax NAME: error: MESSAGE` on stderr and exit status 2, argparse's status for a
    bad invocation. Other exceptions, and SystemExit from argparse, pass through unchanged.
    """
    try:
        return fn(*args)
    except USER_ERRORS as e:
        print(f"alignjax {name}: error: {str(e) or type(e).__name__}", file=sys.stderr)
        return 2

#!/usr/bin/env python3
"""Thin wrapper: `python tools/eval.py ...` == `mtkd eval ...` (see `--help`)."""

import sys

from mtkd.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("eval", sys.argv[1:]))

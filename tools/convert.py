#!/usr/bin/env python3
"""Thin wrapper: `python tools/convert.py ...` == `mtkd convert ...` (see `--help`)."""

import sys

from mtkd.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("convert", sys.argv[1:]))

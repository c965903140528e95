#!/usr/bin/env python3
"""Thin wrapper: `python tools/export.py ...` == `mtkd export ...` (see `--help`)."""

import sys

from mtkd.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("export", sys.argv[1:]))

#!/usr/bin/env python3
"""Thin wrapper: `python tools/prune.py ...` == `mtkd prune ...` (see `--help`)."""

import sys

from mtkd.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("prune", sys.argv[1:]))

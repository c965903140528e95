#!/usr/bin/env python3
"""Thin wrapper: `python tools/benchmark.py ...` == `mtkd benchmark ...` (see `--help`)."""

import sys

from mtkd.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("benchmark", sys.argv[1:]))

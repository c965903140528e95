#!/usr/bin/env python3
"""Thin wrapper: `python tools/study.py ...` == `mtkd study ...` (see `--help`)."""

import sys

from mtkd.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("study", sys.argv[1:]))

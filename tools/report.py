#!/usr/bin/env python3
"""Thin wrapper: `python tools/report.py ...` == `mtkd report ...` (see `--help`)."""

import sys

from mtkd.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("report", sys.argv[1:]))

#!/usr/bin/env python3
"""Thin wrapper: `python tools/check_dataset.py ...` == `mtkd check_dataset ...` (see `--help`)."""

import sys

from mtkd.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("check_dataset", sys.argv[1:]))

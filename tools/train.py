#!/usr/bin/env python3
"""Thin wrapper: `python tools/train.py ...` == `mtkd train ...` (see `--help`)."""

import sys

from mtkd.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("train", sys.argv[1:]))

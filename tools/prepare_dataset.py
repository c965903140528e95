#!/usr/bin/env python3
"""Thin wrapper: `python tools/prepare_dataset.py ...` == `mtkd prepare_dataset ...` (see `--help`)."""

import sys

from mtkd.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("prepare_dataset", sys.argv[1:]))

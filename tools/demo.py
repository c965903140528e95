#!/usr/bin/env python3
"""Thin wrapper: `python tools/demo.py ...` == `mtkd demo ...` (see `--help`)."""

import sys

from mtkd.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("demo", sys.argv[1:]))

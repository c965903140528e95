#!/usr/bin/env python3
"""Thin wrapper: `python tools/make_shapes.py ...` == `mtkd make_shapes ...` (see `--help`)."""

import sys

from mtkd.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("make_shapes", sys.argv[1:]))

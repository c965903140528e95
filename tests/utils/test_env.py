"""``mtkd.utils.env``: the garbage-collector freeze around long loops."""

from __future__ import annotations

import gc

from mtkd.utils.env import frozen_gc_heap


def test_frozen_gc_heap_freezes_what_is_alive_and_hands_it_back():
    assert gc.get_freeze_count() == 0
    alive = [object() for _ in range(100)]
    with frozen_gc_heap() as n:
        assert n > len(alive) and gc.get_freeze_count() > len(alive)
    assert gc.get_freeze_count() == 0
    try:
        with frozen_gc_heap():
            raise KeyError("x")
    except KeyError:
        pass
    assert gc.get_freeze_count() == 0  # unfrozen on an error too

"""Model adapters: every supported model family behind ``MultiTaskAdapter`` (see ``base.py``).

Modules here are imported lazily by ``mtkd.models.build`` (``ADAPTERS``); importing this package is cheap.
"""

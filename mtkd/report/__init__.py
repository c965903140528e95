"""Reports: Markdown + self-contained HTML comparing models (``mtkd report``)."""

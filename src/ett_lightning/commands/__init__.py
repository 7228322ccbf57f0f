"""The ``ett`` command line: one dispatcher above the training CLI, the evaluation tools, the converters and the demo.

Only ``python -m ett_lightning`` (``__main__``) imports this folder: the commands depend on the rest, never the
reverse.
"""

"""EfficientFT: one protocol for comparing efficient fine-tuning methods.

The public entry points are :func:`efficientft.train.run` (one run from a :class:`~efficientft.config.RunConfig`)
and the ``eft`` command line (:mod:`efficientft.cli`).
"""

__version__ = "0.1.0"

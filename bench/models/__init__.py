"""Segmentation models: segmentor = backbone + neck + decode head (+ auxiliary head).

Importing this package registers the built-in necks ("multilevel") and heads
("uperhead", "fcn", "linear", "bn_linear"); plug-ins arrive through entry points.
"""

from bench.models import heads, necks  # noqa: F401  (registration side effect)

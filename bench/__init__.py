"""unip-bench harness core: backbones, data, models, protocols, suites and results.

The core knows no particular pre-training method; adapters, necks and commands are found
through the registries in :mod:`bench.registry`.
"""

__version__ = "0.1.0"

"""Protocol plug-ins shipped with the project but kept outside ``bench``: each registers
itself through the ``unipbench.protocols`` entry-point group, as a third-party one would."""

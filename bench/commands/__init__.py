"""Built-in ``unipbench`` sub-commands, one module per family."""

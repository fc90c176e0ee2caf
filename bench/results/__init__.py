"""Results: the store of finished runs, its provenance, and the tables and plots made from it."""

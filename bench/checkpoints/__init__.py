"""Checkpoints: where weights come from (files, URLs, the Hub, a catalogue) and safe reading."""

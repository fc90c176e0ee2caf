"""Evaluation protocols: fine-tuning, linear probing, layer-wise probing."""

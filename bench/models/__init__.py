"""Segmentation models: segmentor = backbone + neck + decode head (+ auxiliary head)."""

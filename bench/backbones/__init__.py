"""Backbones: the adapter contract, the Backbone interface over timm models, FLOP counts."""

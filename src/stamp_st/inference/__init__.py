"""Inference: embed spots and whole-slide tiles with a trained model or a plain backbone."""

"""Training of self-supervised encoders: one trainer, every method."""

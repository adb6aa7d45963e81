"""vitlab: a reproducible Vision Transformer study."""

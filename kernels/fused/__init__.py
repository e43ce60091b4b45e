"""Triton kernels for LRKV: fused decode from the compressed cache and fused key/value reconstruction for training."""

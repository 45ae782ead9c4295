"""Spatial-size arithmetic, so classifier widths follow the input size instead of being hard-coded."""

from __future__ import annotations


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Height (or width) after a convolution or pooling window, as PyTorch computes it."""
    return (size + 2 * padding - kernel) // stride + 1


def check_positive(size: int, model: str, image_size: int) -> int:
    """Return `size`, or raise if the input was too small for the model's downsampling."""
    if size < 1:
        raise ValueError(f"image_size={image_size} is too small for {model}: a feature map would be empty.")
    return size

"""Memory that a feature-only student saves: the class centres of a margin head and their state."""

from __future__ import annotations


def class_centre_memory(
    num_classes: int = 93_431, embedding_size: int = 512, batch_size: int = 128, bytes_per_value: int = 4
) -> dict:
    """Bytes that the margin head (class centres) costs during training, and a feature-only student saves.

    Per optimizer: weights W (C × d) + their gradient + optimizer state: SGD with momentum keeps one
    buffer (C × d), Adam two (exp_avg, exp_avg_sq), plain SGD none. `logits` adds the (B × C)
    logits and their gradient for one batch of `batch_size` per GPU. Defaults: MS1MV3
    (93,431 identities), 512-d, fp32. Returns a dict of byte counts.
    """
    centres = num_classes * embedding_size * bytes_per_value
    logits = 2 * batch_size * num_classes * bytes_per_value
    return {
        "num_classes": num_classes,
        "embedding_size": embedding_size,
        "parameters": num_classes * embedding_size,
        "weights": centres,
        "sgd": 2 * centres,  # weights + gradient
        "sgd_momentum": 3 * centres,  # + momentum buffer
        "adam": 4 * centres,  # + exp_avg + exp_avg_sq
        "logits_per_batch": logits,
        "batch_size": batch_size,
    }


def format_bytes(n: int) -> str:
    """'182.5 MiB (191.3 MB)' style."""
    return f"{n / 2**20:.1f} MiB ({n / 1e6:.1f} MB)"


__all__ = ["class_centre_memory", "format_bytes"]

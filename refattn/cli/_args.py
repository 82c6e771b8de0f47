"""Argument types and the usage error shared by the subcommands (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse

__all__ = ["UsageError", "seed", "positive_int", "positive_float", "probability", "temperatures"]


class UsageError(Exception):
    """A user's mistake: reported in one line with exit code 2."""


def _number(text, convert, what):
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text):
    value = _number(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def seed(text):
    """A master seed: an integer in [0, 2^63) (what numpy.random.default_rng accepts)."""
    value = _number(text, int, "an integer")
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2^63), got {value}")
    return value


def positive_float(text):
    value = _number(text, float, "a number")
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text}")
    return value


def probability(text):
    value = _number(text, float, "a number")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {value}")
    return value


def temperatures(text):
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(v > 0 and v != float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"temperatures must be finite and > 0, got {text}")
    return values

"""azsl-flower: Absolute Zero-Shot Learning as a Flower app."""

__version__ = "0.1.0"

"""eraserd: exact machine unlearning for vision models (LMEraser)."""

__version__ = "0.1.0"

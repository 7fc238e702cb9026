"""opsd-platform: on-policy self-distillation from world feedback, and the gap law."""

__version__ = "0.1.0"

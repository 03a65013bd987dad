"""mlxlora: LoRA fine-tuning studio for the terminal."""

__version__ = "0.1.0"

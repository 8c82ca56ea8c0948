"""Stage 4, train: fine-tuning student models with LoRA (formatting, model store, trainer)."""

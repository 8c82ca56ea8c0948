"""Fine-tuning student models with LoRA: formatting, model store, trainer."""

"""Context extension by fine-tuning: Position Interpolation + S2-Attn + LoRA+ (LongLoRA), as `llqa train/sft/merge`."""

"""Shipping a trained model: merge adapters, convert to GGUF / MLX / HF, and verify the export against its source."""

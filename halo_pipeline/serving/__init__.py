"""An OpenAI-compatible server over three engines (transformers, llama.cpp, MLX) that streams and batches."""

"""The eval step's parts: lm-evaluation-harness on HF, GGUF (in-process llama.cpp) and OpenAI-compatible endpoints."""

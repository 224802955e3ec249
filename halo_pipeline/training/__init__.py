"""Training internals behind the `train` step: algorithm settings, TRL/peft configs, datasets,
metrics, checkpoints, and the MLX path. Heavy libraries are imported inside functions."""

"""Packaged Hydra config groups (searched after a project's own conf/)."""

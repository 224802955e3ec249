"""halo-pipeline: declarative YAML recipes for local LLM post-training pipelines."""

__version__ = "0.1.0"

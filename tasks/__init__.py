"""Built-in step kinds: one module per kind, named as its `uses:` value."""

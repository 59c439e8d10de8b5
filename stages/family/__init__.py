"""Stage `family`: the model configuration to start from (docs/family.md)."""

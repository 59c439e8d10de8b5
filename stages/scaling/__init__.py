"""Stage `scaling`: steps to the target per batch size, the learning rate retuned per size, and the critical batch size."""

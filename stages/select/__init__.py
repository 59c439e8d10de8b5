"""Stage `select`: the initial configuration that reaches the target fastest (or cheapest), with its reasoning."""

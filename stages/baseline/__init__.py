"""Stage `baseline`: train the selected initial configuration once -- the team's pinned baseline."""

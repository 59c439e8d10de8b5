"""Stage `report`: the one document a person reads, built only from the stages' output files."""

"""The learning-rate search the family and scaling stages share: the trial loop (trial.py), its resume
journal (journal.py), the coarse search (coarse.py), refinement and seed reruns (refine.py), how rates
rank over seeds (ranking.py) and the search at one batch size as one call (tune.py)."""

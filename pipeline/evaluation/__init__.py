"""Scoring captions: the evaluate stage's library, caption metrics (and WordNet for METEOR),
the grounded scene metric, the caption sheet and the metrics summary table."""

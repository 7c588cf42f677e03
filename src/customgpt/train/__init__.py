"""Training: the small shared pieces every objective uses, and one short loop per objective."""

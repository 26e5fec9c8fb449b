"""AFD-Module: making pre-trained image classifiers robust to lossy compression (see README)."""

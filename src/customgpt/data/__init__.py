"""Datasets: the registry of public datasets, and per-task datasets and collate functions."""

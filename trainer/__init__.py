"""Trainer of the KneeSegmentation model: synthesis, training, evaluation, export."""

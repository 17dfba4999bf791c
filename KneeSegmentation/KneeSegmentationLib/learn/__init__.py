"""Learning from corrections: corrected case → save → fine-tune → compare → version.

``cases`` saves an image and its corrected labelmap as a training case; ``retrain`` runs the trainer's
fine-tuning in a child process (``children``) and then the comparison; ``compare`` measures both models on
held-out cases and decides the default; ``status`` and ``contract`` are what the trainer's run folder says.
"""

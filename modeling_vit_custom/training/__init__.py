"""The parts of a training run: flags and recipes, the model and its optimizer, checkpoints, evaluation, run log."""

"""Metrics as local `evaluate` modules, loaded by path: evaluate ships no metric scripts and downloads none offline."""

from pathlib import Path

TOP_K_ACCURACY = str(Path(__file__).with_name("top_k_accuracy.py"))
MULTI_LABEL = str(Path(__file__).with_name("multi_label.py"))

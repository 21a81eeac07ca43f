"""Multi-label mAP and F1 as a local `evaluate` module (evaluate ships no multi-label mAP and loads none offline)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Multi-label classification metrics from per-class scores (e.g. `logits.sigmoid()`) and multi-hot references.
`map` is the macro average precision: each class's average precision (the area under its precision-recall curve,
computed as scikit-learn's `average_precision_score`: precision at each distinct score, weighted by the recall it
adds), averaged over the classes with at least one positive sample. `f1` (micro: from the true and false positives
and negatives of all classes together) and `f1_macro` (the mean of the per-class F1s; a class with no positive
sample nor prediction counts 0) predict a class where its score is at least `threshold`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): per sample, a score in [0, 1] per class.
    references (`list` of `list` of `int`): per sample, 1 for each class present and 0 for the others.
    threshold (`float`, defaults to 0.5): the score from which a class is predicted present.
Returns:
    `map`, `f1`, `f1_macro` (`float`), `samples` (`int`, the samples counted) and `map_classes` (`int`, the classes
    with a positive sample, which `map` averages).
Examples:
    >>> metric = evaluate.load("modeling_vit_custom/metrics/multi_label.py")
    >>> metric.compute(predictions=[[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]], references=[[1, 0], [0, 1], [1, 0]])
    {'map': 0.9166666666666666, 'f1': 0.6666666666666666, 'f1_macro': 0.75, 'samples': 3, 'map_classes': 2}
"""


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Average precision of one class: scores (N,) and 0/1 positives (N,) with at least one positive."""
    order = np.argsort(-scores, kind="stable")
    scores, positives = scores[order], positives[order]
    true_pos, false_pos = np.cumsum(positives), np.cumsum(1 - positives)
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]  # one point per distinct score, as a threshold
    true_pos, false_pos = true_pos[last_of_tie], false_pos[last_of_tie]
    precision = true_pos / (true_pos + false_pos)
    recall_gain = np.diff(np.r_[0, true_pos]) / true_pos[-1]
    return float((recall_gain * precision).sum())


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MultiLabel(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references, threshold=0.5):
        scores = np.asarray(predictions, dtype=np.float64).reshape(len(references), -1)
        targets = np.asarray(references, dtype=np.int64).reshape(scores.shape)
        if not np.isin(targets, (0, 1)).all():
            raise ValueError(f"references: expected multi-hot rows of 0 and 1, got values {np.unique(targets)}")
        present = targets.sum(axis=0) > 0
        precisions = [average_precision(scores[:, c], targets[:, c]) for c in np.flatnonzero(present)]
        predicted = scores >= threshold
        true_pos = (predicted & (targets == 1)).sum(axis=0)
        errors = (predicted != (targets == 1)).sum(axis=0)  # false positives + false negatives, per class
        counted = 2 * true_pos + errors
        per_class_f1 = np.divide(2 * true_pos, counted, out=np.zeros(len(counted)), where=counted > 0)
        micro = 2 * true_pos.sum() / max(2 * true_pos.sum() + errors.sum(), 1)
        return {
            "map": float(np.mean(precisions)) if precisions else 0.0,
            "f1": float(micro),
            "f1_macro": float(per_class_f1.mean()) if len(per_class_f1) else 0.0,
            "samples": len(references),
            "map_classes": len(precisions),
        }

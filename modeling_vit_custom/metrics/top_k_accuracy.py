"""Top-k accuracy as a local `evaluate` module (evaluate ships no top-k metric and loads none offline)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-k accuracy: the fraction of samples whose reference label is among the k highest-scoring predicted classes.
Predictions are the class indices ranked by score (highest first), at least max(k) per sample, e.g.
`logits.topk(5).indices`; sending the ranked indices instead of the logits keeps 1000-class evaluation small.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): per sample, class indices ranked by score, highest first.
    references (`list` of `int`): the true class of each sample.
    k (`list` of `int`, defaults to `[1, 5]`): the values of k to report.
Returns:
    `top{k}` (`float`) for each k, and `samples` (`int`), the number of samples counted.
Examples:
    >>> metric = evaluate.load("modeling_vit_custom/metrics/top_k_accuracy.py")
    >>> metric.compute(predictions=[[2, 0, 1], [0, 1, 2]], references=[0, 0], k=[1, 3])
    {'top1': 0.5, 'top3': 1.0, 'samples': 2}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=(1, 5)):
        ranked = np.asarray(predictions, dtype=np.int64).reshape(len(references), -1)
        references = np.asarray(references, dtype=np.int64)
        if ranked.shape[1] < max(k):
            raise ValueError(f"top-{max(k)} accuracy needs {max(k)} ranked classes per sample, got {ranked.shape[1]}")
        hits = ranked == references[:, None]  # (samples, ranked classes)
        result = {f"top{n}": float(hits[:, :n].any(axis=1).mean()) if len(references) else 0.0 for n in k}
        result["samples"] = len(references)
        return result

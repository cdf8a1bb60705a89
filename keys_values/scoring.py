"""An evaluation's metrics: the original's keys (scikit-learn's micro/macro F1, micro precision and recall,
accuracy on the label string) and this project's (n, interval, majority class, invalid rate, the original's
exact-string accuracy), SQuAD's official exact match and F1 for open answers."""

import re
import string
from collections import Counter

from keys_values.statistics import wilson_interval


def squad_normalize(text):
    """SQuAD's official answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_scores(prediction, gold):
    """SQuAD's official (exact match, token F1) of one prediction: the maximum over every gold answer."""
    p = squad_normalize(prediction).split()
    best_em = best_f1 = 0.0
    for answer in gold:
        a = squad_normalize(answer).split()
        em = float(p == a)
        common = sum((Counter(p) & Counter(a)).values())
        if not p or not a:
            f1 = em
        elif common == 0:
            f1 = 0.0
        else:
            prec, rec = common / len(p), common / len(a)
            f1 = 2 * prec * rec / (prec + rec)
        best_em, best_f1 = max(best_em, em), max(best_f1, f1)
    return best_em, best_f1


def metrics(gold, predictions, strict_predictions, choices=None):
    """The original's keys (micro_f1, macro_f1, micro precision and recall, accuracy: scikit-learn on the label
    string, gold[i][0]) plus n, majority baseline, a 95% interval, the invalid rate and the original's
    exact-string accuracy. `choices` is a classification task's label set; without it (an open-answer task)
    SQuAD's exact match and token F1 are added, each the maximum over all of an example's gold answers."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    labels = [g[0] for g in gold]
    n = len(labels)
    correct = sum(p == y for p, y in zip(predictions, labels))
    out = {
        "micro_f1": f1_score(labels, predictions, average="micro", zero_division=0),
        "macro_f1": f1_score(labels, predictions, average="macro", zero_division=0),
        "precision": precision_score(labels, predictions, average="micro", zero_division=0),
        "recall": recall_score(labels, predictions, average="micro", zero_division=0),
        "accuracy": accuracy_score(labels, predictions),
        "accuracy_strict": sum(p == y for p, y in zip(strict_predictions, labels)) / n,
        "n": n,
        "correct": correct,
        "accuracy_ci95": wilson_interval(correct, n),
        "majority_baseline": Counter(labels).most_common(1)[0][1] / n,
    }
    if choices is not None:
        out["invalid_rate"] = sum(p not in choices for p in predictions) / n
        # what was answered, most often first ("" or another text: an answer naming no label): a constant
        # predictor has one entry
        out["prediction_counts"] = dict(Counter(p if p in choices else "(no label)" for p in predictions)
                                        .most_common())
    else:
        scores = [squad_scores(p, g) for p, g in zip(predictions, gold)]
        out["exact_match"] = sum(s[0] for s in scores) / n
        out["f1"] = sum(s[1] for s in scores) / n
        out["invalid_rate"] = sum(not p for p in predictions) / n
    return {k: float(v) if isinstance(v, (float,)) or hasattr(v, "item") else v for k, v in out.items()}

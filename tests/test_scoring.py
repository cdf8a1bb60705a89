"""keys_values/scoring.py: the metrics on a hand-computed example, SQuAD's official exact match and F1."""


import pytest

from keys_values import scoring


def test_metrics_on_a_hand_computed_example():
    gold = [("true",), ("true",), ("false",), ("true",)]
    preds = ["true", "false", "false", "maybe"]
    m = scoring.metrics(gold, preds, ["true", "false", "False", "maybe"], ["true", "false"])
    assert m["accuracy"] == 0.5 and m["accuracy_strict"] == 0.25
    assert m["micro_f1"] == m["precision"] == m["recall"] == 0.5
    # macro F1 over the labels that occur: true P=1 R=1/3 -> 1/2; false P=1/2 R=1 -> 2/3; maybe 0
    assert m["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert m["majority_baseline"] == 0.75 and m["invalid_rate"] == 0.25 and m["n"] == 4
    lo, hi = m["accuracy_ci95"]
    assert lo == pytest.approx(0.1500, abs=1e-3) and hi == pytest.approx(0.8500, abs=1e-3)  # Wilson, 2 of 4
    assert "exact_match" not in m


def test_squad_scores_as_the_official_script():
    assert scoring.squad_normalize("The  Eiffel-Tower!") == "eiffeltower"  # punctuation removed, not spaced
    assert scoring.squad_scores("The Eiffel tower!", ["eiffel tower"]) == (1.0, 1.0)
    em, f1 = scoring.squad_scores("red apples and pears", ["green apples"])
    assert em == 0.0 and f1 == pytest.approx(2 * (1 / 4) * (1 / 2) / (1 / 4 + 1 / 2))
    # several golds: the maximum of each score over them (EM from one gold, F1 possibly from another)
    em, f1 = scoring.squad_scores("the old town", ["old town hall", "The Old Town.", "new town"])
    assert em == 1.0 and f1 == 1.0  # the second gold matches exactly; against the first alone: EM 0, F1 0.8
    assert scoring.squad_scores("the old town", ["old town hall"]) == (0.0, pytest.approx(0.8))
    em, f1 = scoring.squad_scores("old harbour", ["old town hall", "harbour", "new town"])
    assert em == 0.0 and f1 == pytest.approx(2 * (1 / 2) * 1 / (1 / 2 + 1))  # 'harbour': P 1/2, R 1
    assert scoring.squad_scores("", ["x"]) == (0.0, 0.0) and scoring.squad_scores("a", ["the"]) == (1.0, 1.0)
    m = scoring.metrics([("rice",), ("fish", "fish soup")], ["rice", "the fish soup"], ["rice", "the fish soup"])
    assert m["exact_match"] == 1.0 and m["f1"] == 1.0 and m["accuracy"] == 0.5  # accuracy: the first gold only

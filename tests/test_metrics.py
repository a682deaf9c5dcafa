import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from efficientft.tasks import metrics


@pytest.fixture
def classes():
    rng = np.random.default_rng(7)
    gold = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.7, gold, 1 - gold)
    return pred, gold


def test_accuracy_f1_mcc_match_sklearn(classes):
    pred, gold = classes
    assert metrics.accuracy(pred, gold) == pytest.approx(accuracy_score(gold, pred))
    assert metrics.f1(pred, gold) == pytest.approx(f1_score(gold, pred))
    assert metrics.matthews_corr(pred, gold) == pytest.approx(matthews_corrcoef(gold, pred))


def test_multiclass_mcc_matches_sklearn():
    rng = np.random.default_rng(3)
    gold = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.6, gold, rng.integers(0, 3, 300))
    assert metrics.matthews_corr(pred, gold) == pytest.approx(matthews_corrcoef(gold, pred))


def test_degenerate_cases():
    assert metrics.matthews_corr([1, 1, 1], [1, 1, 1]) == 0.0  # sklearn's convention for one class
    assert metrics.f1([0, 0], [0, 0]) == 0.0
    assert metrics.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5


def test_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(11)
    gold = np.round(rng.uniform(0, 5, 150), 1)  # rounding makes ties, which Spearman must average
    pred = gold + rng.normal(0, 1, 150)
    pred[:20] = np.round(pred[:20])
    assert metrics.pearson(pred, gold) == pytest.approx(pearsonr(pred, gold)[0])
    assert metrics.spearman(pred, gold) == pytest.approx(spearmanr(pred, gold)[0])


def test_compute_names():
    out = metrics.compute(("accuracy", "f1"), [1, 0, 1], [1, 1, 1])
    assert out == {"accuracy": pytest.approx(2 / 3), "f1": pytest.approx(0.8)}

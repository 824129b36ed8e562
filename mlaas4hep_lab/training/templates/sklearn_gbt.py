"""model.py template (scikit-learn): histogram gradient-boosted trees.

``def model()`` (no argument needed for tree models; ``def model(idim)`` works too) returns an
unfitted classifier. Signal scores are ``predict_proba(X)[:, 1]``.

HistGradientBoostingClassifier has no ``partial_fit``: it is fitted once on the whole training split,
gathered in memory (refused above 4 GiB; option ``max_accumulate_bytes``). For more events, use the
XGBoost template (trained over the stream) or an estimator that grows chunk by chunk
(``GradientBoostingClassifier``, ``RandomForestClassifier``: warm start; ``MLPClassifier``: partial_fit).
"""

from sklearn.ensemble import HistGradientBoostingClassifier


def model():
    """200 boosting iterations; early stopping off so the training loop decides on the data it sees."""
    return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, early_stopping=False, random_state=0)

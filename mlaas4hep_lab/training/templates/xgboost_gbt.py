"""model.py template (XGBoost): gradient-boosted trees with the histogram method.

``def model()`` (no argument needed for tree models; ``def model(idim)`` works too) returns an
unfitted ``XGBClassifier``. Signal scores are ``predict_proba(X)[:, 1]``.
"""

import xgboost  # noqa: TID251 -- a user's model.py imports its framework directly


def model():
    """200 trees of depth 6, learning rate 0.1, histogram tree method (fast on CPU, works on GPU)."""
    return xgboost.XGBClassifier(n_estimators=200, max_depth=6, learning_rate=0.1, tree_method="hist",
                                 random_state=0)

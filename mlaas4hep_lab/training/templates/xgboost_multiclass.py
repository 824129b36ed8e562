"""model.py template (XGBoost, multi-class task): gradient-boosted trees with the histogram method.

``def model()`` (no argument needed for tree models; ``def model(idim)`` or ``def model(idim, n_outputs)``
work too) returns an unfitted ``XGBClassifier`` with the ``multi:softprob`` objective: one probability per
class and event, in class-index order. ``num_class`` is left out: the trainer sets it to the number of
classes of the data (params ``classes``, labels.txt or the per-event ``label``). Each round adds one tree
per class; the metrics reported per round are ``mlogloss`` and ``merror``.
"""

import xgboost  # noqa: TID251 -- a user's model.py imports its framework directly


def model():
    """200 rounds of depth-6 trees, learning rate 0.1, histogram tree method (fast on CPU, works on GPU)."""
    return xgboost.XGBClassifier(objective="multi:softprob", n_estimators=200, max_depth=6, learning_rate=0.1,
                                 tree_method="hist", random_state=0)

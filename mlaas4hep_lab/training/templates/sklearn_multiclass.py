"""model.py template (scikit-learn, multi-class task): histogram gradient-boosted trees.

``def model()`` (no argument needed for tree models; ``def model(idim)`` or ``def model(idim, n_outputs)``
work too) returns an unfitted classifier. The number of classes K comes from the data (params ``classes``,
labels.txt or the per-event ``label``); the class probabilities are ``predict_proba(X)``, one column per
class in class-index order (a class the model never saw gets probability 0).

HistGradientBoostingClassifier fits K trees per iteration (one per class, softmax loss) and has no
``partial_fit``: it is fitted once on the whole training split, gathered in memory (refused above 4 GiB;
option ``max_accumulate_bytes``). For more events, use the XGBoost multi-class template (trained over the
stream) or an estimator that grows chunk by chunk (``RandomForestClassifier``, ``ExtraTreesClassifier``:
warm start; ``MLPClassifier``, ``SGDClassifier(loss="log_loss")``: partial_fit).
"""

from sklearn.ensemble import HistGradientBoostingClassifier


def model():
    """200 boosting iterations; early stopping off so the training loop decides on the data it sees."""
    return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, early_stopping=False, random_state=0)

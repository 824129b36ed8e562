"""model.py template (scikit-learn, regression task): histogram gradient-boosted trees.

``def model(idim, n_outputs)`` returns an unfitted regressor for ``n_outputs`` targets (params ``target``:
one branch or expression, or a list of them); trees see the targets in their own units. Called as
``model()`` or ``model(idim)`` it is built for one target.

HistGradientBoostingRegressor predicts one target: for several it is wrapped in
``sklearn.multioutput.MultiOutputRegressor`` (one model per target). It has no ``partial_fit``: it is fitted
once on the whole training split, gathered in memory (refused above 4 GiB; option ``max_accumulate_bytes``).
For more events, use the XGBoost regression template (trained over the stream) or an estimator that grows
chunk by chunk and predicts several targets itself (``RandomForestRegressor``, ``ExtraTreesRegressor``:
warm start; ``MLPRegressor``: partial_fit, on standardised inputs).
"""

from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.multioutput import MultiOutputRegressor


def model(idim=None, n_outputs=1):
    """200 boosting iterations of squared error (``loss="absolute_error"`` is less sensitive to outliers);
    early stopping off so the training loop decides on the data it sees."""
    trees = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.1, early_stopping=False, random_state=0)
    return trees if n_outputs == 1 else MultiOutputRegressor(trees)

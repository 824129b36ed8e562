"""model.py template (XGBoost, regression task): gradient-boosted trees with the histogram method.

``def model()`` (no argument needed for tree models; ``def model(idim)`` or ``def model(idim, n_outputs)``
work too) returns an unfitted ``XGBRegressor`` on the targets in their own units (params ``target``: one
branch or expression, or a list of them). Several targets train together: by default one tree per target
and round (``multi_strategy="one_output_per_tree"``; ``"multi_output_tree"`` grows trees with a vector
leaf instead, which has no ONNX export). The metric reported per round is ``rmse``.

Other objectives: ``reg:absoluteerror`` (the median: robust to outliers), ``reg:gamma`` or ``reg:tweedie``
(positive targets such as energies), ``reg:pseudohubererror`` (robust too, but give it ``base_score`` near
the targets' median and ``huber_slope`` on the scale of the residuals: XGBoost starts it from one Newton
step, far off for targets away from 0, and it then hardly moves -- dmlc/xgboost#9378).
"""

import xgboost  # noqa: TID251 -- a user's model.py imports its framework directly


def model():
    """200 rounds of depth-6 trees, learning rate 0.1, squared error, histogram tree method."""
    return xgboost.XGBRegressor(objective="reg:squarederror", n_estimators=200, max_depth=6, learning_rate=0.1,
                                tree_method="hist", multi_strategy="one_output_per_tree", random_state=0)

"""Exact per-feature contributions of a fitted HistGradientBoostingClassifier.

Why: a tutor email and an API answer name the reasons of a risk, and for a tree
model those reasons must add up to what the model computed, not approximate it.
This is the path attribution of Saabas ("tree interpreter"): every node carries
the count-weighted mean of the leaf values below it, and each split on a row's
path moves the prediction from the parent's value to the child's; that move is
credited to the split's feature. Per tree, root value + the moves = the leaf
value, so baseline + all contributions = the raw decision function, exactly.

scikit-learn offers no public access to a fitted booster's trees. This module is
the ONE place that reads the private attributes it needs, named here, and
`tests/test_tree_contributions.py` fails loudly if an upgrade changes them:
`_predictors` (list per iteration of `TreePredictor` with a `nodes` record array
and `raw_left_cat_bitsets`), `_baseline_prediction`,
`_bin_mapper.make_known_categories_bitsets()` and `_preprocess_X` (with
categorical features the booster reorders its columns, categorical first, and
ordinal-encodes them; `is_categorical_` says which were moved)."""

# private-api: scikit-learn's HistGradientBoostingClassifier internals (_predictors,
# _bin_mapper, _baseline_prediction, _preprocess_X): no public API walks the fitted
# trees. Tripwire: tests/test_tree_contributions.py fails by name when they change.

from __future__ import annotations

import weakref

import numpy as np

PRIVATE_ATTRIBUTES = ("_predictors", "_baseline_prediction", "_bin_mapper", "_preprocess_X")


_MEANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Node means per tree, computed once: a fitted tree never changes."""


def _means_of(predictor) -> np.ndarray:
    means = _MEANS.get(predictor)
    if means is None:
        means = _MEANS[predictor] = _node_means(predictor.nodes)
    return means


def _node_means(nodes: np.ndarray) -> np.ndarray:
    """Count-weighted mean of the leaf values under each node (children come after
    their parent in sklearn's node array, so one reverse pass settles every node)."""
    means = nodes["value"].astype(float).copy()
    counts = nodes["count"].astype(float)
    for i in range(len(nodes) - 1, -1, -1):
        if not nodes["is_leaf"][i]:
            left, right = nodes["left"][i], nodes["right"][i]
            total = counts[left] + counts[right]
            weights = (counts[left], counts[right]) if total > 0 else (1.0, 1.0)
            means[i] = (weights[0] * means[left] + weights[1] * means[right]) / sum(weights)
    return means


def _in_bitset(bitsets: np.ndarray, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Whether each integer category is set in its row of a (n, 8) uint32 bitset array."""
    words = bitsets[rows, values // 32]
    return ((words >> (values % 32).astype(np.uint32)) & 1).astype(bool)


def _go_left(node: np.ndarray, predictor, x: np.ndarray, known) -> np.ndarray:
    """Per row at these nodes: does it go left? The same rules as sklearn's predictor."""
    missing = np.isnan(x)
    left = np.where(missing, node["missing_go_to_left"].astype(bool), x <= node["num_threshold"])
    categorical = node["is_categorical"].astype(bool) & ~missing
    if categorical.any():
        known_bits, f_idx_map = known
        cat = np.where(categorical & (x >= 0), x, 0).astype(np.int64)
        rows = node["bitset_idx"].astype(np.int64)
        in_left = _in_bitset(predictor.raw_left_cat_bitsets, rows, cat)
        seen = _in_bitset(known_bits, f_idx_map[node["feature_idx"]].astype(np.int64), cat)
        unknown_side = node["missing_go_to_left"].astype(bool)
        cat_left = np.where(x < 0, unknown_side, np.where(in_left, True, ~seen & unknown_side))
        left = np.where(categorical, cat_left, left)
    return left


def _tree_contributions(predictor, X: np.ndarray, known) -> tuple[float, np.ndarray]:
    """(root value, per row and column the moves credited to that column) of one tree."""
    nodes = predictor.nodes
    means = _means_of(predictor)
    out = np.zeros(X.shape)
    at = np.zeros(len(X), dtype=np.int64)
    active = ~nodes["is_leaf"][at].astype(bool)
    while active.any():
        rows = np.flatnonzero(active)
        node = nodes[at[rows]]
        feature = node["feature_idx"].astype(np.int64)
        left = _go_left(node, predictor, X[rows, feature], known)
        child = np.where(left, node["left"], node["right"]).astype(np.int64)
        np.add.at(out, (rows, feature), means[child] - means[at[rows]])
        at[rows] = child
        active[rows] = ~nodes["is_leaf"][child].astype(bool)
    return float(means[0]), out


def tree_contributions(clf, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(baseline per row, contributions per row and encoded column) of a fitted binary
    HistGradientBoostingClassifier: baseline + contributions.sum(1) equals
    `clf.decision_function(X)`."""
    X = np.asarray(X, dtype=float)
    seen = clf._preprocess_X(X, reset=False)
    known = clf._bin_mapper.make_known_categories_bitsets()
    baseline = float(np.ravel(clf._baseline_prediction)[0])
    total = np.zeros(X.shape)
    for (predictor,) in clf._predictors:
        root, moves = _tree_contributions(predictor, seen, known)
        baseline += root
        total += moves
    out = np.empty_like(total)
    out[:, _column_order(clf, X.shape[1])] = total
    return np.full(len(X), baseline), out


def _column_order(clf, n_columns: int) -> np.ndarray:
    """Original column of each column the trees see (categorical ones first, if any)."""
    flags = getattr(clf, "is_categorical_", None)
    if flags is None:
        return np.arange(n_columns)
    return np.concatenate([np.flatnonzero(flags), np.flatnonzero(~flags)])

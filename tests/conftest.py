"""The whole suite runs with the algos' value-reading checks on (token ids in range, weights >= 0,
...), which production code runs only in the first iteration of a run or under RLHFKIT_CHECK_VALUES=1."""

import os

os.environ.setdefault("RLHFKIT_CHECK_VALUES", "1")

"""docs/math.md stays true: every example runs and gives the result shown, every reference resolves."""

import ast
import importlib
import math
import re
from pathlib import Path

import pytest
import torch

import rlhfkit.algos as algos

ROOT = Path(__file__).resolve().parents[2]
MATH_MD = ROOT / "docs" / "math.md"
UNIT = ROOT / "tests" / "unit"


def table_rows():
    """(equation, function, test, example, result) cells of every 5-column table row."""
    rows = []
    for line in MATH_MD.read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 5 and cells[0] not in ("Equation", "---"):
            rows.append(cells)
    return rows


ROWS = table_rows()


def code(cell):
    return re.findall(r"`([^`]+)`", cell)


def flat(value):
    """Tensors, tuples and nested lists -> one flat list of numbers (pairs stay pairs of ints)."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in flat(v)]
    return [value]


def test_the_page_has_a_row_per_public_function():
    # `module:name` references, plus bare names mentioned beside them (`masked_sum`, `margin=`)
    documented = {ref.split(":")[-1] for row in ROWS for ref in code(row[1])}
    public_functions = {n for n in algos.__all__ if callable(getattr(algos, n)) and not n.endswith("Stats")}
    assert public_functions - documented == set()


@pytest.mark.parametrize("row", ROWS, ids=[row[0][:40] for row in ROWS])
def test_example_gives_the_result_shown(row):
    (example,), (result,) = code(row[3]), code(row[4])
    namespace = {"math": math, "torch": torch, **{name: getattr(algos, name) for name in algos.__all__}}
    got = flat(eval(example, namespace))  # our own documentation
    # the examples run in float32 and print 6 decimals: 1e-6 absolute plus float32 rounding
    assert got == pytest.approx(flat(ast.literal_eval(result)), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("row", ROWS, ids=[row[0][:40] for row in ROWS])
def test_references_resolve(row):
    for ref in code(row[1]):
        if ":" in ref:
            module, name = ref.split(":")
            assert hasattr(importlib.import_module(module), name), ref
    test_file = None
    for ref in code(row[2]):
        file, name = ref.split("::")
        test_file = file or test_file
        assert re.search(rf"^def {name}\(", (UNIT / test_file).read_text(), re.MULTILINE), ref

import pytest

from snipnb import checks


def test_a_budget_parameter_is_none_one_budget_or_an_increasing_ladder():
    assert checks.budgets("budget_epochs", None) == [] and checks.budgets("budget_epochs", 0) == []
    assert checks.budgets("budget_epochs", 120) == [120]
    assert checks.budgets("budget_epochs", [120, 240, 480]) == [120, 240, 480]
    with pytest.raises(ValueError, match=r"budget_epochs must be increasing budgets, got \[240, 120\]"):
        checks.budgets("budget_epochs", [240, 120])
    with pytest.raises(ValueError, match="increasing"):
        checks.budgets("budget_epochs", [120, 120])
    with pytest.raises(ValueError, match="increasing"):
        checks.budgets("budget_epochs", [])
    with pytest.raises(ValueError, match=r"budget_epochs\[1\] must be an int, got 240.5"):
        checks.budgets("budget_epochs", [120, 240.5])
    with pytest.raises(ValueError, match="budget_epochs must be >= 1, got -5"):
        checks.budgets("budget_epochs", -5)
    with pytest.raises(ValueError, match="must be an int"):
        checks.budgets("budget_epochs", True)

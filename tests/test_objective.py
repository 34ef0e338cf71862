import pytest

from objx import Objective
from objx.sft.objective import resolve_objective


@pytest.mark.parametrize("spec, kind, alpha, min_prob", [
    ("nll", "nll", 1.0, None),
    ("-log p", "nll", 1.0, None),
    ("-p", "power", 1.0, None),
    ("-p^10", "power", 10.0, None),
    ("-p^0.5", "power", 0.5, None),
    ("log1m", "log1m", 1.0, None),
    ("-log p·1[p≥0.2]", "nll", 1.0, 0.2),
    ("nll*1[p>=0.25]", "nll", 1.0, 0.25),
])
def test_parse(spec, kind, alpha, min_prob):
    obj = Objective.parse(spec)
    assert (obj.kind, obj.alpha, obj.min_prob) == (kind, alpha, min_prob)
    assert Objective.parse(obj.name) == obj  # names round-trip


def test_parse_max_threshold_and_errors():
    assert Objective.parse("-p·1[p≤0.9]").max_prob == 0.9
    with pytest.raises(ValueError, match="cannot parse"):
        Objective.parse("-q")
    with pytest.raises(TypeError, match="objective must be a str"):
        Objective.parse(3)
    with pytest.raises(ValueError, match="objective must be one of"):
        Objective("focal")


def test_resolve_keywords():
    assert resolve_objective("power", alpha=3.0).alpha == 3.0
    assert resolve_objective("-p^10", alpha=3.0).alpha == 10.0
    assert resolve_objective(Objective("nll", min_prob=0.1), max_prob=0.9) == Objective("nll", min_prob=0.1, max_prob=0.9)
    assert Objective("power", alpha=10).name == "-p^10"

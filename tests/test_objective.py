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
    assert resolve_objective("-p^10", alpha=10.0).alpha == 10.0
    assert resolve_objective(Objective("nll", min_prob=0.1), max_prob=0.9) == Objective("nll", min_prob=0.1, max_prob=0.9)
    assert Objective("power", alpha=10).name == "-p^10"


@pytest.mark.parametrize("spec", ["nll", "-p", "-p^10", "log1m", Objective("nll"), Objective("power", alpha=2.0)])
def test_an_alpha_the_objective_does_not_use_is_an_error(spec):
    # It used to be dropped silently ("-p^10" with alpha=3.0 ran -p^10).
    with pytest.raises(ValueError, match=r"alpha=3 is not used by objective .*alpha is the exponent of objective "
                                         r"'power'"):
        resolve_objective(spec, alpha=3.0)
    with pytest.raises(TypeError, match="alpha must be a number"):
        resolve_objective("power", alpha="3")


@pytest.mark.parametrize("alpha, param", [(0.0, 0.0), (1e-46, 0.0), (1e-45, 0.0), (2.0 ** -127, 0.0),
                                          (2.0 ** -126, 2.0 ** -126), (1e-30, 1e-30), (10.0, 10.0)])
def test_vanishing_power_alpha_runs_as_nll(alpha, param):
    # Below float32's smallest normal the kernels would divide by a flushed or subnormal alpha.
    assert Objective("power", alpha=alpha).param == param

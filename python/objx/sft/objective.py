"""objx.Objective: which probability-based SFT objective to train with (SPEC §1)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Optional, Union

KINDS = ("nll", "power", "log1m")
DEFAULT_ALPHA = 1.0
# float32's smallest normal number: a power alpha below it reaches a float32 kernel as 0 or a
# subnormal, and (1 - p^alpha)/alpha turns into 0/0; there -log p equals power(alpha) to within
# alpha |log p| / 2 relative (< 1e-36), so such an alpha is run as nll (SPEC §1: alpha -> 0 is nll).
_NLL_BELOW_ALPHA = 2.0 ** -126

_THRESHOLD = re.compile(r"^(?P<base>.*?)\s*(?:·|\*)?\s*1\[\s*p\s*(?P<op>>=|≥|<=|≤)\s*(?P<value>[-+0-9.eE]+)\s*\]$")
_POWER = re.compile(r"^-\s*p\s*(?:\^\s*(?P<alpha>[-+0-9.eE]+))?$")


@dataclass(frozen=True)
class Objective:
    """An SFT objective f(p) of the gold-token probability p, with optional thresholds.

    kind:     "nll" (-log p), "power" ((1 - p^alpha)/alpha; alpha=1 is the paper's "-p"),
              or "log1m" (log(1 - p + eps)).
    min_prob, max_prob: a row counts only when min_prob <= p <= max_prob.
    reason:   why it was chosen, when a selection heuristic made it.
    """

    kind: str = "nll"
    alpha: float = 1.0
    eps: float = 1e-3
    min_prob: Optional[float] = None
    max_prob: Optional[float] = None
    reason: Optional[str] = field(default=None, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"objective must be one of {KINDS} (or '-p', '-p^K'), got {self.kind!r}")
        if self.kind == "power" and not 0 <= self.alpha < math.inf:
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha}")
        if self.kind == "log1m" and not self.eps > 0:
            raise ValueError(f"log1m eps must be > 0, got {self.eps}")
        for name in ("min_prob", "max_prob"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")

    @classmethod
    def parse(cls, spec: Union[str, "Objective"]) -> "Objective":
        """Parse "nll", "-log p", "-p", "-p^10", "power", "log1m", "log(1-p)", optionally with a
        threshold suffix in the paper's notation: "-log p·1[p≥0.2]" or "nll*1[p>=0.2]"."""
        if isinstance(spec, Objective):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"objective must be a str or objx.Objective, got {type(spec).__name__}")
        text = spec.strip()
        thresholds = {}
        m = _THRESHOLD.match(text)
        if m:
            key = "min_prob" if m["op"] in (">=", "≥") else "max_prob"
            thresholds[key] = float(m["value"])
            text = m["base"].strip()
        compact = text.replace(" ", "").lower()
        if compact in ("nll", "-logp", "ce", "cross_entropy"):
            return cls("nll", **thresholds)
        if compact in ("log1m", "log(1-p)", "log(1-p+eps)"):
            return cls("log1m", **thresholds)
        if compact == "power":
            return cls("power", **thresholds)
        pm = _POWER.match(compact)
        if pm:
            return cls("power", alpha=float(pm["alpha"]) if pm["alpha"] else 1.0, **thresholds)
        raise ValueError(f"cannot parse objective {spec!r}: expected 'nll', '-p', '-p^K', 'power' or "
                         f"'log1m', optionally followed by '·1[p≥x]'")

    @property
    def param(self) -> float:
        """The kernel's objective parameter: alpha for power (0, i.e. nll, for a vanishing alpha),
        eps for log1m."""
        if self.kind == "power":
            return self.alpha if self.alpha >= _NLL_BELOW_ALPHA else 0.0
        return self.eps if self.kind == "log1m" else 0.0

    @property
    def name(self) -> str:
        """The paper's name for it."""
        if self.kind == "power":
            base = "-p" if self.alpha == 1 else f"-p^{self.alpha:g}"
        elif self.kind == "log1m":
            base = "log(1-p)"
        else:
            base = "-log p"
        if self.min_prob is not None:
            base += f"·1[p≥{self.min_prob:g}]"
        if self.max_prob is not None:
            base += f"·1[p≤{self.max_prob:g}]"
        return base

    def __str__(self) -> str:
        return self.name


def _number(fn: str, name: str, value) -> float:
    if isinstance(value, bool) or not hasattr(value, "__float__"):
        raise TypeError(f"{fn}: {name} must be a number, got {value!r}")
    return float(value)


def resolve_objective(objective, alpha: float = DEFAULT_ALPHA, min_prob=None, max_prob=None,
                      fn: str = "objx.prob_loss") -> Objective:
    """The Objective that prob_loss's arguments describe: a string names the kind (the "power"
    kind takes alpha from the keyword, "-p^K" carries its own), keywords override thresholds. An
    alpha the objective would not use is an error, not silently dropped."""
    obj = Objective.parse(objective)
    alpha = _number(fn, "alpha", alpha)
    if isinstance(objective, str) and objective.strip().lower() == "power":
        obj = replace(obj, alpha=alpha)
    elif alpha != DEFAULT_ALPHA and not (obj.kind == "power" and obj.alpha == alpha):
        has = f"carries its own alpha = {obj.alpha:g}" if obj.kind == "power" else "has no alpha"
        raise ValueError(f"{fn}: alpha={alpha:g} is not used by objective {obj.name!r}, which {has}; alpha "
                         f"is the exponent of objective 'power' (or write '-p^K')")
    if min_prob is not None:
        obj = replace(obj, min_prob=float(min_prob))
    if max_prob is not None:
        obj = replace(obj, max_prob=float(max_prob))
    if obj.min_prob is not None and obj.max_prob is not None and obj.min_prob > obj.max_prob:
        raise ValueError(f"min_prob ({obj.min_prob}) must not exceed max_prob ({obj.max_prob})")
    return obj


def check_extras(fn: str, objective: Objective, label_smoothing=0.0, z_loss=0.0, softcap=None) -> None:
    """SPEC §1's extras, checked where they are given (a module's constructor, a front door)
    rather than first by the kernel at the first forward."""
    label_smoothing = _number(fn, "label_smoothing", label_smoothing)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{fn}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if label_smoothing != 0 and objective.kind != "nll":
        raise ValueError(f"{fn}: label_smoothing is only defined for objective 'nll', got {objective.name!r}")
    z_loss = _number(fn, "z_loss", z_loss)
    if not 0 <= z_loss < math.inf:  # comparisons, not math.isfinite: traced floats are symbolic
        raise ValueError(f"{fn}: z_loss must be a finite number >= 0, got {z_loss}")
    if softcap is not None:
        softcap = _number(fn, "softcap", softcap)
        if not 0 < softcap < math.inf:
            raise ValueError(f"{fn}: softcap must be a finite number > 0, got {softcap}")

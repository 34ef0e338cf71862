"""`objx demo`: the capability continuum of "Beyond Log Likelihood" in miniature, on CPU.

A small causal transformer is pre-trained on a synthetic language until it is strong at one task
family and ignorant of another; objx.select measures its capability on each fine-tuning set and
recommends an objective; copies are then fine-tuned with -log p, -p, -p^10 and -log p·1[p≥0.2]
(through objx.linear_prob_loss) and evaluated on clean held-out data.

    from objx import demo
    result = demo.run(demo.DemoConfig())
    print(demo.table(result)); demo.plot(result, "curves.png")
"""

from .experiment import OBJECTIVES, DemoConfig, DemoResult, run
from .report import plot, table, to_json, verdict

__all__ = ["OBJECTIVES", "DemoConfig", "DemoResult", "run", "table", "plot", "to_json", "verdict"]

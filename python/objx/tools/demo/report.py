"""The demo's outputs: a text table, a PNG of the learning curves, and the raw numbers as JSON."""

import json
from collections import Counter
from dataclasses import asdict

from .experiment import CaseResult, DemoResult


def _recommended(result: CaseResult) -> str:
    return Counter(o.name for o in result.recommended).most_common(1)[0][0]


def _regimes(result: CaseResult) -> str:
    """How many seeds landed in each regime, e.g. "2 strong, 1 intermediate"."""
    return ", ".join(f"{n} {r}" for r, n in Counter(r.regime for r in result.reports).most_common())


def _span(values) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ({min(values):.3f}–{max(values):.3f})"


PRIOR_LEANING = ("-p", "-p^10", "-log p·1[p≥0.2]")


def _prediction_held(ranking, regime):
    """The paper's prediction for a regime: at the strong end every prior-leaning objective beats
    -log p; at the weak end -log p beats them all; in between it predicts nothing (None)."""
    nll_rank = ranking.index("-log p")
    return {"strong": all(ranking.index(o) < nll_rank for o in PRIOR_LEANING), "weak": nll_rank == 0}.get(regime)


def verdict(result: CaseResult) -> dict:
    """Did the recommendation win and did the paper's prediction hold, over the seeds' mean and seed by seed
    (each seed judged by its own measured regime and its own recommendation)."""
    ranking = result.ranking()
    pick = _recommended(result)
    regime = Counter(r.regime for r in result.reports).most_common(1)[0][0]
    seeds = range(len(result.reports))
    won = sum(result.ranking(s)[0] == result.recommended[s].name for s in seeds)
    held = [_prediction_held(result.ranking(s), result.reports[s].regime) for s in seeds]
    return {"recommended": pick, "winner": result.winner, "recommended_rank": ranking.index(pick) + 1,
            "ranking": ranking, "recommended_minus_nll": result.final(pick) - result.final("-log p"),
            "regime": regime, "paper_prediction_held": _prediction_held(ranking, regime),
            "seeds": len(result.reports), "seeds_recommended_won": won,
            "seeds_prediction_held": sum(h is True for h in held), "seeds_with_prediction": sum(h is not None for h in held)}


def table(demo: DemoResult) -> str:
    cfg = demo.config
    lines = [f"objx demo: the capability continuum in miniature ({len(cfg.seeds)} seed(s), "
             f"{demo.seconds:.0f} s, CPU; pre-training steps per seed: {demo.pretrain_steps})", ""]
    for result in demo.cases:
        case, v = result.case, verdict(result)
        noise = f", {case.label_noise:.0%} of the training answer tokens replaced at random" if case.label_noise else ""
        means = [r.mean_p for r in result.reports]
        regimes = _regimes(result)
        lines += [f"{case.name}: task '{case.task}'{noise}",
                  f"  before fine-tuning: mean gold-token p on the training set {_span(means)}; seeds: {regimes} "
                  f"-> recommend_objective: {v['recommended']}",
                  f"  pre-trained clean token accuracy {_span(demo.pretrained_accuracy[case.task])}",
                  f"  {'objective':<18} {'final acc':>10} {'mean acc':>10} {'exact match':>12}"]
        for name in v["ranking"]:
            marks = [m for m, on in (("winner", name == v["winner"]), ("recommended", name == v["recommended"])) if on]
            exact = sum(result.exact_match[name]) / len(result.exact_match[name])
            lines.append(f"  {name:<18} {result.final(name):>10.3f} {result.area(name):>10.3f} {exact:>12.3f}"
                         + (f"   <- {', '.join(marks)}" if marks else ""))
        agree = "picked the winner" if v["recommended_rank"] == 1 else f"ranked {v['recommended_rank']} of {len(v['ranking'])}"
        lines.append(f"  recommended {v['recommended']} {agree}; {v['recommended_minus_nll']:+.3f} final accuracy vs -log p")
        if v["paper_prediction_held"] is not None:
            claim = ("every prior-leaning objective beats -log p" if v["regime"] == "strong"
                     else "-log p beats every prior-leaning objective")
            lines.append(f"  paper's prediction for a {v['regime']} model ({claim}): "
                         + ("held" if v["paper_prediction_held"] else "did not hold") + " on the mean")
        if v["seeds"] > 1:
            for seed, (report, rec) in enumerate(zip(result.reports, result.recommended)):
                lines.append(f"    seed {seed}: mean p {report.mean_p:.3f} ({report.regime}), recommended {rec.name}, "
                             f"ranking {' > '.join(result.ranking(seed))}")
            lines.append(f"  seed by seed: recommendation won {v['seeds_recommended_won']}/{v['seeds']}; "
                         f"prediction held {v['seeds_prediction_held']}/{v['seeds_with_prediction']} "
                         "(seeds in the strong or weak regime)")
        lines.append("")
    lines.append("final acc: clean held-out token accuracy after fine-tuning (mean over seeds); mean acc: along the "
                 f"run, every {cfg.eval_every} steps; ties within 0.005 go to the higher mean acc.")
    return "\n".join(lines)


def plot(demo: DemoResult, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(demo.cases), figsize=(6 * len(demo.cases), 4.2), squeeze=False)
    for ax, result in zip(axes[0], demo.cases):
        pick = _recommended(result)
        for name, runs in result.curves.items():
            points = list(zip(*runs))
            mean = [sum(p) / len(p) for p in points]
            line, = ax.plot(result.steps, mean, label=name + ("  (recommended)" if name == pick else ""),
                            linewidth=2.6 if name == pick else 1.6)
            if len(runs) > 1:  # each seed, faint: the seeds can start far apart
                for run in runs:
                    ax.plot(result.steps, run, color=line.get_color(), linewidth=0.8, alpha=0.35)
        regimes = _regimes(result)
        mean_p = sum(r.mean_p for r in result.reports) / len(result.reports)
        ax.set_title(f"{result.case.name}\nmean p before = {mean_p:.3f} (seeds: {regimes})")
        ax.set_xlabel("fine-tuning step" + ("  (thick: mean over seeds; thin: each seed)" if len(result.reports) > 1
                                            else ""))
        ax.set_ylabel("clean held-out token accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_json(demo: DemoResult) -> str:
    return json.dumps({
        "config": asdict(demo.config), "seconds": demo.seconds, "pretrained_accuracy": demo.pretrained_accuracy,
        "pretrain_steps": demo.pretrain_steps,
        "cases": [{"case": asdict(r.case), "steps": r.steps, "curves": r.curves, "exact_match": r.exact_match,
                   "capability": [{"mean_p": c.mean_p, "quantiles": {str(q): v for q, v in c.quantiles.items()},
                                   "count": c.count, "regime": c.regime} for c in r.reports],
                   "recommended": [o.name for o in r.recommended], "verdict": verdict(r)} for r in demo.cases],
    }, indent=1, ensure_ascii=False)

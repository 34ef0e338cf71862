"""`objx demo`: a short smoke run through every code path, and the verdict logic on known numbers."""

import json
import subprocess
import sys

import pytest
import torch

from objx import select
from objx.tools import demo
from objx.tools.demo import language
from objx.tools.demo.experiment import Case, CaseResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.cpu_only


def test_language_marks_only_answers_and_noise_stays_in_the_answer_alphabet():
    g = torch.Generator().manual_seed(0)
    clean = language.make_batch("cipher", 64, g)
    assert clean.input_ids.shape == clean.labels.shape == (64, language.SEQ_LEN - 1)
    supervised = clean.labels != language.IGNORE
    assert supervised.sum(1).eq(language.LENGTH).all()
    assert clean.labels[supervised].ge(language.LETTERS).all()
    # pairsum answers follow their rule; noise replaces about the asked fraction with answer tokens
    g = torch.Generator().manual_seed(1)
    batch = language.make_batch("pairsum", 4000, g, label_noise=0.3)
    x = batch.input_ids[:, 2:2 + language.LENGTH] - language.DIGITS
    rule = (x + x.flip(1)) % 10 + language.DIGITS
    answer = batch.labels[:, -language.LENGTH - 1:-1]
    wrong = (answer != rule).float().mean().item()
    assert abs(wrong - 0.3 * 0.9) < 0.01  # a replacement hits the right digit 1 time in 10
    assert answer.ge(language.DIGITS).all() and answer.lt(language.DIGITS + 10).all()
    with pytest.raises(ValueError, match="task"):
        language.make_batch("sorting", 2, g)


def test_quick_run_produces_every_number_table_plot_and_json(tmp_path):
    config = demo.DemoConfig.quick()
    result = demo.run(config, progress=False)
    assert [c.case.task for c in result.cases] == ["pairsum", "cipher"]
    for case in result.cases:
        assert set(case.curves) == set(demo.OBJECTIVES)
        assert case.steps == [0, 10, 20]
        for runs in case.curves.values():
            assert len(runs) == len(config.seeds) and all(len(c) == len(case.steps) for c in runs)
            assert all(0.0 <= a <= 1.0 for c in runs for a in c)
        # every objective starts from the same pre-trained model, evaluated on the same clean data
        assert len({runs[0][0] for runs in case.curves.values()}) == 1
        report = case.reports[0]
        assert report.regime == select.measure_capability(torch.tensor([report.mean_p])).regime
        assert case.recommended[0] == select.recommend_objective(report)
    text = demo.table(result)
    assert "(a) strong task, noisy labels" in text and "(b) weak task" in text
    for name in demo.OBJECTIVES:
        assert name in text
    png = tmp_path / "curves.png"
    demo.plot(result, str(png))
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    data = json.loads(demo.to_json(result))
    assert data["cases"][1]["verdict"]["ranking"][0] == result.cases[1].winner


def _case(finals, areas, regime):
    """A CaseResult whose curves end at `finals` and average to `areas` (one seed, two points)."""
    mean_p = {"strong": 0.8, "weak": 0.05}[regime]
    result = CaseResult(Case("x", "pairsum", 0.0), [0, 10])
    report = select.measure_capability(torch.full((10,), mean_p))
    result.reports.append(report)
    result.recommended.append(select.recommend_objective(report))
    for name in demo.OBJECTIVES:
        result.curves[name] = [[2 * areas[name] - finals[name], finals[name]]]
        result.exact_match[name] = [0.0]
    return result


def test_verdict_ranks_by_final_accuracy_then_by_the_run_and_checks_the_papers_prediction():
    names = list(demo.OBJECTIVES)  # -log p, -p, -p^10, -log p·1[p≥0.2]
    strong = _case(dict(zip(names, [0.80, 0.990, 0.993, 0.95])), dict(zip(names, [0.8, 0.97, 0.90, 0.9])), "strong")
    v = demo.verdict(strong)
    # -p and -p^10 tie within 0.005; -p had the better run
    assert v["ranking"] == ["-p", "-p^10", "-log p·1[p≥0.2]", "-log p"]
    assert v["winner"] == v["recommended"] == "-p" and v["recommended_rank"] == 1
    assert v["paper_prediction_held"] is True and v["recommended_minus_nll"] == pytest.approx(0.19)
    weak = _case(dict(zip(names, [0.9, 0.95, 0.1, 0.3])), dict(zip(names, [0.8, 0.7, 0.1, 0.3])), "weak")
    v = demo.verdict(weak)
    assert v["winner"] == "-p" and v["recommended"] == "-log p" and v["recommended_rank"] == 2
    assert v["paper_prediction_held"] is False
    assert "ranked 2 of 4" in demo.table(demo.DemoResult(demo.DemoConfig.quick(), [weak], {"pairsum": [0.5]}, [20], 1.0))


def test_cli_demo_quick(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "objx", "demo", "--quick", "--quiet", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "recommend_objective" in run.stdout
    assert (out / "table.txt").read_text().strip() in run.stdout
    assert (out / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out / "results.json").read_text())["config"]["seeds"] == [0]
    bad = subprocess.run([sys.executable, "-m", "objx", "demo", "--quick", "--seeds", "0", "--out", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--seeds" in bad.stderr

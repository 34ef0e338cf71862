"""Summarises a bench/gpu_check.sh results folder: OUT_DIR/summary.json and a one-screen
OUT_DIR/summary.md (steps, tests, memcheck, syncs, ncu, bench ratios). Reads whatever exists, so a
step killed at its time limit still shows what it left. Standard library only.

    python bench/gpu_summary.py OUT_DIR [--total-seconds S]

Exit status 1 when a step failed or timed out (skipped steps do not count).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

MAX_FAILURES = 10
# The line of a failed step's log that says why: an exception, a usage error, a missing command.
ERROR_LINE = re.compile(r"^\w[\w.]*(Error|Exception|Interrupt)\b|^ERROR\b|^E\s|error:|failed to run|No such file|"
                        r"not found|Killed|FAILED|^problems:")
IMPL_ORDER = ["eager", "compile", "liger", "cce", "objx-tiles", "logits+objx"]


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def first_line(text: str, limit: int = 160) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""


def read_steps(out: Path) -> list[dict]:
    steps = []
    for i, line in enumerate(read_text(out / "steps.tsv").splitlines()):
        parts = line.split("\t")
        if i == 0 or len(parts) < 5:
            continue
        name, status, seconds, code, limit = parts[:5]
        steps.append({"step": name, "status": status, "seconds": int(seconds) if seconds.isdigit() else None,
                      "exit": code, "limit": limit, "note": parts[5] if len(parts) > 5 else ""})
    return steps


def read_run(out: Path) -> dict:
    run = {}
    for line in read_text(out / "run.txt").splitlines():
        key, _, value = line.partition(": ")
        if value:
            run.setdefault(key.strip(), value.strip())
    return run


# --- tests -------------------------------------------------------------------------------------

# pytest -v: "tests/f.py::test[id] PASSED   [ 42%]" once a test ends; the id alone while it runs.
LOG_OUTCOME = re.compile(r"^(tests/.+?::.+?)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)(?:\s.*)?\s+\[\s*\d+%\]\s*$")
LOG_STARTED = re.compile(r"^(tests/\S+?::.*?)\s*$")
SHORT_SUMMARY = re.compile(r"^(FAILED|ERROR) (tests/.+?)(?: - (.*))?$")


def tests_from_junit(path: Path):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures = []
    for case in root.iter("testcase"):
        if not case.get("name"):  # the test that a SIGINT interrupted: listed without a name or outcome
            continue
        name = f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
                failures.append({"test": name, "kind": child.tag,
                                 "message": first_line(child.get("message") or child.text or "")})
                break
            if child.tag == "skipped":
                outcome = "skipped"
        counts[outcome] += 1
    return counts, failures


def tests_from_log(text: str):
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    key = {"PASSED": "passed", "XPASS": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped",
           "XFAIL": "skipped"}
    failures, messages = [], {}
    for line in text.splitlines():
        m = SHORT_SUMMARY.match(line)
        if m:
            messages[m.group(2)] = (m.group(3) or "").strip()[:160]
    seen = set()
    for line in text.splitlines():
        m = LOG_OUTCOME.match(line)
        if m and (m.group(1), m.group(2)) not in seen:
            seen.add((m.group(1), m.group(2)))
            counts[key[m.group(2)]] += 1
            if m.group(2) in ("FAILED", "ERROR"):
                failures.append({"test": m.group(1), "kind": m.group(2).lower(),
                                 "message": messages.get(m.group(1), "")})
    return counts, failures


def summarise_tests(out: Path) -> dict:
    groups = {}
    for log in sorted(out.glob("tests_*.log")):
        group = log.stem[len("tests_"):]
        text = read_text(log)
        junit = tests_from_junit(out / f"tests_{group}.xml")
        source = "junit"
        if junit is None:
            junit, source = tests_from_log(text), "log"
        counts, failures = junit
        entry = {**counts, "source": source, "failures": failures}
        started = [m.group(1) for line in text.splitlines()
                   if (m := LOG_STARTED.match(line)) and not LOG_OUTCOME.match(line)]
        if started:  # a test whose outcome never came: the one running when the group was stopped
            entry["running_when_stopped"] = started[-1]
        if "KeyboardInterrupt" in text:
            entry["interrupted"] = True
        usage = [line for line in text.splitlines() if line.startswith("ERROR: ")]
        if usage and not any(counts.values()):
            entry["usage_error"] = usage[0][:200]
        groups[group] = entry
    total = {k: sum(g[k] for g in groups.values()) for k in ("passed", "failed", "errors", "skipped")}
    failures = [f for g in groups.values() for f in g["failures"]]
    return {"total": total, "groups": groups, "first_failures": failures[:MAX_FAILURES]}


# --- memcheck, syncs, ncu ----------------------------------------------------------------------

def summarise_memcheck(out: Path) -> dict:
    text = read_text(out / "memcheck.log")
    result = {"sanitizer_ran": "COMPUTE-SANITIZER" in text or "ERROR SUMMARY" in text}
    m = re.search(r"ERROR SUMMARY: (\d+) error", text)
    result["errors"] = int(m.group(1)) if m else None
    first, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        body = line.removeprefix("=========").strip()
        if line.startswith("=========") and re.match(r"(Invalid|Program hit|Uninitialized|Misaligned|Out-of-range|"
                                                     r"Malloc|Cuda API|Leaked|Race|Error)", body):
            where = next((ln.removeprefix("=========").strip() for ln in lines[i + 1:i + 4]
                          if ln.removeprefix("=========").strip().startswith("at ")), "")
            first.append(f"{body[:120]} {where[:120]}".strip())
            if len(first) >= 5:
                break
    result["first_errors"] = first
    result["dtypes_done"] = re.findall(r"memcheck cases (\w+): done", text)
    cases = read_json(out / "memcheck_cases.json") or {}
    result["cases"] = cases.get("cases")
    result["case_failures"] = cases.get("failures", [])[:MAX_FAILURES]
    if cases.get("crashed"):
        result["crashed"] = cases["crashed"]
    return result


def summarise_syncs(out: Path) -> dict:
    detail = read_json(out / "syncs_detail.json") or {}
    result = {"syncs": detail.get("syncs"), "measured": detail.get("measured"), "errors": detail.get("errors", {}),
              "dtype": detail.get("dtype"), "shape": detail.get("shape")}
    if detail.get("crashed"):
        result["crashed"] = detail["crashed"]
    return result


def summarise_ncu(out: Path) -> dict:
    log = read_text(out / "ncu.log")
    report = read_text(out / "ncu.txt")
    profiled = {}
    for m in re.finditer(r'==PROF== Profiling "([^"]+)"', log + "\n" + report):
        profiled[m.group(1)] = profiled.get(m.group(1), 0) + 1
    errors = [ln.strip()[:200] for ln in (log + "\n" + report).splitlines() if "==ERROR==" in ln][:3]
    # Durations from the per-kernel summary: a kernel's header line, then a "Duration" row.
    durations, current = {}, None
    for line in report.splitlines():
        header = re.match(r"^\s{0,4}([A-Za-z_][\w:]*)(?:<.*?>)?\(.*\)\s+\(\d+, \d+, \d+\)x\(\d+, \d+, \d+\)", line)
        if header:
            current = header.group(1).split("::")[-1]
            continue
        row = re.match(r"^\s+Duration\s+(\S+)\s+([\d.,]+)", line)
        if row and current and current not in durations:
            durations[current] = f"{row.group(2)} {row.group(1)}"
    return {"report": "ncu.txt" if report else None, "kernels_profiled": profiled, "durations": durations,
            "errors": errors}


# --- benches -----------------------------------------------------------------------------------

def summarise_bench(out: Path) -> list[dict]:
    rows = []
    order = [st["step"] for st in read_steps(out)]
    for path in sorted(out.glob("bench_*.json"), key=lambda p: (order.index(p.stem) if p.stem in order else 99, p.name)):
        data = read_json(path) or {}
        cases = {}
        for r in data.get("results", []):
            key = (r.get("family"), r.get("objective"), r.get("shape"), r.get("dtype"))
            cases.setdefault(key, {})[r.get("impl")] = r
        for (family, objective, shape, dtype), impls in cases.items():
            base = impls.get("objx") or {}
            ms = base.get("median_ms")
            row = {"file": path.name, "family": family, "objective": objective, "shape": shape, "dtype": dtype,
                   "objx_ms": ms, "objx_mb": base.get("peak_mb"), "objx_check": base.get("check"),
                   "floor_ms": base.get("floor_ms"),
                   "ok": all(r.get("ok", False) for r in impls.values()), "time_ratio": {}, "mem_ratio": {},
                   "failed": {}}
            for name, r in impls.items():
                if name == "objx":
                    continue
                if r.get("median_ms") and ms:
                    row["time_ratio"][name] = round(r["median_ms"] / ms, 3)
                if r.get("peak_mb") and base.get("peak_mb"):
                    row["mem_ratio"][name] = round(r["peak_mb"] / base["peak_mb"], 3)
                if r.get("median_ms") is None:
                    row["failed"][name] = (r.get("note") or "no time")[:120]
            if not base:
                row["failed"]["objx"] = "no objx row"
            rows.append(row)
    return rows


# --- markdown ----------------------------------------------------------------------------------

def fmt_s(v):
    return "-" if v is None else str(v)


def markdown(s: dict) -> str:
    info = s.get("info") or {}
    device = info.get("device_name") or info.get("device") or "?"
    verdict = "PASS" if s["ok"] else "FAIL"
    lines = [f"# objx GPU check: {verdict} ({s['mode']}, {device}, {s['run'].get('date', '?')}, "
             f"{fmt_s(s.get('total_seconds'))} s)", ""]
    build = info.get("build") or {}
    if info:
        lines.append(f"torch {info.get('torch')} (CUDA {info.get('torch_cuda')}), objx {build.get('version')} "
                     f"built with torch {build.get('torch_built_with')}, CUDA kernels "
                     f"{build.get('cuda_archs') if build.get('cuda_compiled') else 'none'}; "
                     f"{'problems: ' + '; '.join(info['problems']) if info.get('problems') else 'no problems'}")
        lines.append("")
    lines += ["| step | status | s | limit | note |", "| --- | --- | --- | --- | --- |"]
    for st in s["steps"]:
        mark = {"pass": "pass", "fail": "**FAIL**", "timeout": "**TIMEOUT**"}.get(st["status"], st["status"])
        lines.append(f"| {st['step']} | {mark} | {fmt_s(st['seconds'])} | {st['limit']} | {st['note'][:130]} |")
    why = {}
    for st in s["steps"]:
        if st["status"] in ("fail", "timeout") and st.get("last_line"):
            why.setdefault(st["last_line"], []).append(st["step"])
    if why:
        lines += [""] + [f"- {', '.join(names)}: `{last[:150]}`" for last, names in why.items()]
    t = s["tests"]
    tot = t["total"]
    lines += ["", f"**tests**: {tot['passed']} passed, {tot['failed']} failed, {tot['errors']} errors, "
              f"{tot['skipped']} skipped; " + ", ".join(
                  f"{g}: {v['passed']}/{v['failed']}/{v['errors']}"
                  + (" (from log)" if v["source"] == "log" else "")
                  + (f" stopped in {v['running_when_stopped']}" if v.get("running_when_stopped") else "")
                  + (" (usage error)" if v.get("usage_error") else "")
                  for g, v in t["groups"].items())]
    lines += [f"- {e}" for e in dict.fromkeys(v["usage_error"] for v in t["groups"].values() if v.get("usage_error"))]
    for f in t["first_failures"]:
        lines.append(f"- `{f['test'][:110]}`: {f['message'][:140]}")
    mc = s["memcheck"]
    if mc["sanitizer_ran"]:
        mc_line = f"{fmt_s(mc['errors'])} sanitizer errors"
    else:
        mc_line = "compute-sanitizer did not run"
    lines += ["", f"**memcheck**: {mc_line}; {fmt_s(mc['cases'])} cases, {len(mc['case_failures'])} raised"
              + (f"; dtypes done: {', '.join(mc['dtypes_done'])}" if mc["cases"] is None and mc["dtypes_done"] else "")
              + (f"; crashed: {mc['crashed']}" if mc.get("crashed") else "")]
    lines += [f"- {e}" for e in mc["first_errors"]]
    lines += [f"- `{f['case']}`: {f['error'][:140]}" for f in mc["case_failures"][:5]]
    sy = s["syncs"]
    if sy.get("crashed"):
        lines += ["", f"**syncs**: crashed: {sy['crashed'][:160]}"]
    elif sy["syncs"]:
        if sy["measured"]:
            body = ", ".join(f"{op} {n}" for op, n in sy["syncs"].items())
        else:
            body = "not measured (CPU); every op ran" if not sy["errors"] else "not measured (CPU)"
        lines += ["", f"**syncs** per fwd+bwd ({sy.get('dtype')}, {sy.get('shape')}): {body}"]
        lines += [f"- {op} raised: {e}" for op, e in sy["errors"].items()]
    nc = s["ncu"]
    if nc["kernels_profiled"] or nc["report"] or nc["errors"]:
        kernels = ", ".join(f"{k}" + (f" {nc['durations'][k]}" if k in nc["durations"] else "") + f" x{n}"
                            for k, n in nc["kernels_profiled"].items())
        lines += ["", f"**ncu**: {kernels or 'no kernel profiled'}"
                  + (f" (report: {nc['report']})" if nc["report"] else "")]
        lines += [f"- {e}" for e in nc["errors"]]
    rows = s["bench"]
    if rows:
        impls = [i for i in IMPL_ORDER if any(i in r["time_ratio"] or i in r["failed"] for r in rows)]
        impls += sorted({i for r in rows for i in r["time_ratio"]} - set(impls))
        lines += ["", "**bench** (time / objx; > 1: objx faster; peak memory ratio in brackets)", "",
                  "| family | objective | shape | dtype | objx ms | floor ms | objx/floor | " + " | ".join(impls)
                  + " | ok |",
                  "| --- " * (8 + len(impls)) + "|"]
        for r in rows:
            cells = []
            for i in impls:
                if i in r["time_ratio"]:
                    mem = r["mem_ratio"].get(i)
                    cells.append(f"{r['time_ratio'][i]:.2f}x" + (f" ({mem:.1f}x)" if mem else ""))
                else:
                    cells.append("failed" if i in r["failed"] else "-")
            ms = f"{r['objx_ms']:.2f}" if r["objx_ms"] is not None else "-"
            floor = r.get("floor_ms")
            over = f"{r['objx_ms'] / floor:.2f}x" if floor and r["objx_ms"] else "-"
            lines.append(f"| {r['family']} | {r['objective']} | {r['shape']} | {r['dtype']} | {ms} | "
                         f"{'-' if not floor else f'{floor:.3g}'} | {over} | "
                         + " | ".join(cells) + f" | {'ok' if r['ok'] else '**FAIL**'} |")
    bad = [st["step"] for st in s["steps"] if st["status"] in ("fail", "timeout")]
    lines += ["", f"failed or timed out: {', '.join(bad)}" if bad else "every step passed or was skipped"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--total-seconds", type=int)
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    run = read_run(out)
    steps = read_steps(out)
    for st in steps:  # the last words of a failed step's log (an exception, "command not found", ...)
        if st["status"] in ("fail", "timeout"):
            tail = [ln.strip() for ln in read_text(out / f"{st['step']}.log").splitlines()
                    if ln.strip() and not ln.startswith("===")]
            errors = [ln for ln in tail if ERROR_LINE.search(ln)]
            st["last_line"] = (errors or tail or [""])[-1][:300]
    summary = {
        "mode": run.get("mode", "?"),
        "run": run,
        "total_seconds": args.total_seconds,
        "info": read_json(out / "info.json"),
        "steps": steps,
        "tests": summarise_tests(out),
        "memcheck": summarise_memcheck(out),
        "syncs": summarise_syncs(out),
        "ncu": summarise_ncu(out),
        "bench": summarise_bench(out),
    }
    summary["ok"] = bool(steps) and not any(st["status"] in ("fail", "timeout") for st in steps)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = markdown(summary)
    (out / "summary.md").write_text(md)
    print(md, end="")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

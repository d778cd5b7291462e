"""The fault suite's harness (bench/faults) in a very short form: the figures and their bounds (a result that breaks
one makes the report say FAIL), the report and RELIABILITY.md from the JSON, the workers' generators, and
(``slow``) a real server process with the good client, a fuzzing worker and a few seconds of soak through the
command line. No timing is asserted, and the server's own figures are not: the report states them."""

from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path

import pytest
from rich.console import Console

from bench.faults import cli, report
from bench.faults.figures import GoodTally, Growth, ScenarioResult, evaluate, growth, passed
from bench.faults.scenarios import Context, Plan, fuzz_atheris


def clean_result(**changes: object) -> ScenarioResult:
    r = ScenarioResult(
        "fake", "a scenario that holds every figure", inputs={"things tried": 10},
        good=GoodTally(sent=100, ok=100), needs_in_time=True, rss_start_mb=80, rss_peak_mb=120,
        rss_growth=Growth(100, 101), fd_growth=Growth(20, 20),
    )  # fmt: skip
    for key, value in changes.items():
        setattr(r, key, value)
    return r


def failed_figures(r: ScenarioResult) -> set[str]:
    return {f.name for f in evaluate(r) if not f.passed}


def test_a_clean_result_passes_every_figure() -> None:
    r = clean_result()
    assert passed(r)
    names = {f.name for f in evaluate(r)}
    assert {"server crashes", "wrong answers", "frames unanswered", "peak RSS (MB)", "good in-time rate (%)"} <= names
    assert {"RSS growth (%)", "FD growth (%)"} <= names


@pytest.mark.parametrize(
    ("changes", "figure"),
    [
        ({"crashes": 1}, "server crashes"),
        ({"good": GoodTally(sent=100, ok=100, wrong=1)}, "wrong answers"),
        ({"good": GoodTally(sent=100, ok=99, unanswered=1)}, "frames unanswered"),
        ({"good": GoodTally(sent=100, ok=99, no_reason=1)}, "frames unanswered"),
        ({"attacker_unanswered": 3}, "frames unanswered"),
        ({"server_errors": 1}, "server errors (UNKNOWN/INTERNAL/leaks)"),
        ({"rss_peak_mb": 301.0}, "peak RSS (MB)"),
        ({"good": GoodTally(sent=100, ok=98, failed={"DEADLINE_EXCEEDED": 2})}, "good in-time rate (%)"),
        ({"rss_growth": Growth(100, 106)}, "RSS growth (%)"),
        ({"fd_growth": Growth(20, 22)}, "FD growth (%)"),
        ({"error": "the harness broke"}, "harness completed"),
    ],
)
def test_a_result_that_breaks_a_bound_fails_that_figure(changes: dict[str, object], figure: str) -> None:
    r = clean_result(**changes)
    assert failed_figures(r) == {figure}
    assert not passed(r)


def test_the_in_time_figure_applies_only_where_asked() -> None:
    r = clean_result(needs_in_time=False, good=GoodTally(sent=100, ok=50, failed={"UNAVAILABLE": 50}))
    assert passed(r)
    assert "good in-time rate (%)" not in {f.name for f in evaluate(r)}


def test_growth_compares_medians_after_warm_up() -> None:
    g = growth([50, 90, 100, 100, 101, 102, 103, 104], warmup=2)
    assert g is not None and g.start == 100 and g.end == 103
    assert growth([1.0, 2.0], warmup=2) is None


def test_results_survive_the_json_and_the_report_says_fail(tmp_path: Path) -> None:
    results = [clean_result(), clean_result(name="leaky", rss_peak_mb=900.0)]
    doc = {"command": "python -m bench.faults --short", "results": [r.to_json() for r in results]}
    back = [ScenarioResult.from_json(json.loads(json.dumps(x))) for x in doc["results"]]
    assert [passed(r) for r in back] == [True, False]
    assert back[1].good is not None and back[1].good.in_time_rate == 1.0

    out = io.StringIO()
    report.print_report(back, Console(file=out, width=140))
    text = out.getvalue()
    assert "FAIL" in text and "PASS" in text and "1/2 scenarios pass" in text

    path = tmp_path / "faults.json"
    path.write_text(json.dumps(doc))
    md_path = tmp_path / "RELIABILITY.md"
    assert cli.main(["--write-md", "--out", str(path), "--md", str(md_path)]) == 0
    md = md_path.read_text()
    assert "| leaky | peak RSS (MB) | 900 | <= 300 MB | **FAIL** |" in md
    assert "python -m bench.faults --short" in md
    assert "| fake | things tried | 10 |" in md


def test_the_frame_strategy_and_random_bodies_make_inputs() -> None:
    from bench.faults.worker import Frames, generate_frames, random_body

    frames = Frames()
    made = generate_frames(frames, 30, seed=1)
    assert len(made) == 30
    rng = random.Random(0)
    assert len({random_body(rng, frames) for _ in range(50)}) > 40


def test_atheris_fuzzes_the_decoder_or_says_why_not() -> None:
    r = fuzz_atheris(Context(Plan(atheris_runs=300), frames=[object()], model="m"))  # type: ignore[list-item]
    if r.outcomes.get("atheris") == "not installed":
        assert r.notes and "atheris" in r.notes[0]
    else:
        assert r.inputs["decode inputs (atheris runs)"] == 300
        assert r.crashes == 0, r.examples


@pytest.mark.slow
def test_the_good_client_checks_its_answers_against_a_real_server() -> None:
    from bench.faults.good import GoodClient, good_frames, model_name, reference_classes
    from bench.faults.server import Sampler, ServerProc

    frames = good_frames(images=2)
    with ServerProc(backend="onnxruntime") as server:
        reference = reference_classes(server.address, model_name(), frames)
        wrong = [(c + 1) % 10 for c in reference]
        with Sampler(server) as sampler, GoodClient(server.address, model_name(), frames, reference) as good:
            sampler.sample()
            import time

            time.sleep(1.5)
        tally = good.tally()
        with GoodClient(server.address, model_name(), frames, wrong) as liar:
            time.sleep(0.6)
        lied = liar.tally()
    assert server.crashes == 0
    assert tally.sent > 0 and tally.wrong == 0 and tally.unanswered == 0
    assert lied.wrong == lied.ok > 0  # a reference the server disagrees with is counted wrong
    assert sampler.peak_rss_mb > 0


@pytest.mark.slow
def test_the_command_line_runs_scenarios_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    argv = ["--short", "--only", "fuzz_raw", "soak", "--seconds", "2", "--soak-s", "6", "--out", str(out)]
    code = cli.main(argv)
    doc = json.loads(out.read_text())
    assert code == (0 if doc["passed"] else 1)
    assert [r["name"] for r in doc["results"]] == ["fuzz_raw", "soak"]
    for r in doc["results"]:
        assert r["error"] is None, r["notes"]
        assert r["good"]["sent"] > 0
        assert r["figures"]
    raw = doc["results"][0]["inputs"]
    assert raw["raw: unary Infer"] > 0 and raw["raw: stream InferStream"] > 0
    soak = doc["results"][1]
    assert soak["inputs"]["load-1: frames"] > 0 and soak["samples"]
    assert doc["command"].startswith("python -m bench.faults --short --only fuzz_raw soak")
    assert cli.main(["--write-md", "--out", str(out), "--md", str(tmp_path / "R.md")]) == 0
    assert "| soak |" in (tmp_path / "R.md").read_text()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))

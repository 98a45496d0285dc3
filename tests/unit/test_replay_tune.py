"""The tuner: seeded and deterministic, constraints respected, Pareto front non-dominated,
clear errors for what it cannot tune."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterrouting import InvalidRecordError
from prefixcache.replay import (
    ClusterModel,
    Objective,
    main,
    parse_objective,
    synthetic_trace,
    tune,
)

REQS = synthetic_trace(seed=2, sessions=60, duration_s=120.0)
MODEL = ClusterModel(replicas=3)
RANGES = [("queue_weight", 0.0, 1.0), ("share_slack", 0.0, 4.0)]


def test_same_seed_same_points_and_defaults_first() -> None:
    obj = parse_objective("ttft_mean s.t. max_over_mean<=1.3")
    a = tune(REQS, ranges=RANGES, objective=obj, budget=4, seed=3, model=MODEL)
    b = tune(REQS, ranges=RANGES, objective=obj, budget=4, seed=3, model=MODEL)
    c = tune(REQS, ranges=RANGES, objective=obj, budget=4, seed=4, model=MODEL)
    assert a == b
    assert [p.params for p in a.points] != [p.params for p in c.points]
    assert a.points[0].params == {}
    for p in a.points[1:]:
        assert 0.0 <= p.params["queue_weight"] <= 1.0
        assert p.params["share_slack"] in (0.0, 1.0, 2.0, 3.0, 4.0)


def test_best_is_the_least_feasible_and_the_front_is_non_dominated() -> None:
    obj = Objective("ttft_p90", (("max_over_mean", 1.2),))
    res = tune(REQS, ranges=RANGES, objective=obj, budget=6, seed=1, model=MODEL)
    feasible = [p for p in res.points if p.feasible]
    for p in res.points:
        assert p.feasible == (p.constraints["max_over_mean"] <= 1.2)
    if feasible:
        assert res.best is not None and res.best.value == min(p.value for p in feasible)
    for p in res.pareto:
        for q in res.points:
            assert not (
                q.value < p.value
                and q.constraints["max_over_mean"] < p.constraints["max_over_mean"]
            )


def test_bad_objectives_and_parameters_are_typed_errors() -> None:
    with pytest.raises(InvalidRecordError, match="objective"):
        parse_objective("latency")
    with pytest.raises(InvalidRecordError, match="objective"):
        parse_objective("ttft_p99 s.t. max_over_mean>1")
    with pytest.raises(InvalidRecordError, match="not tunable"):
        tune(REQS, ranges=[("cache_threshold", 0, 1)], objective=Objective("ttft_p99"), model=MODEL)
    with pytest.raises(InvalidRecordError, match="not tunable"):
        tune(
            REQS,
            policy="round-robin",
            ranges=[("queue_weight", 0, 1)],
            objective=Objective("ttft_p99"),
        )
    # A range end the policy refuses fails before any replay (no progress is reported).
    calls: list[int] = []
    for name, lo, hi in (
        ("shared_kv_usage", 0.5, 2.0),
        ("queue_weight", -1.0, 0.5),
        ("hot_lower", 0.5, 1.5),
        ("hot_per_copy", 0.0, 1.0),
        ("hot_confidence", -1.0, 1.0),
    ):
        with pytest.raises(InvalidRecordError, match=name):
            tune(
                REQS,
                ranges=[(name, lo, hi)],
                objective=Objective("ttft_p99"),
                model=MODEL,
                progress=lambda k, n: calls.append(k),
            )
    assert calls == []


def test_tune_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(
        "\n".join(
            json.dumps(
                {
                    "timestamp": r.arrival * 1000,
                    "input_length": r.input_tokens,
                    "output_length": r.output_tokens,
                    "hash_ids": list(r.blocks),
                }
            )
            for r in REQS
        )
    )
    argv = ["tune", str(p), "--replicas", "3", "--budget", "3", "--seed", "5"]
    assert main([*argv, "--param", "queue_weight=0.05..0.5"]) == 0
    out = capsys.readouterr().out
    assert "tune cache-cost: minimise ttft_p99 subject to max_over_mean<=1.15; 3 points" in out
    assert "Pareto front" in out
    assert main([*argv, "--param", "queue_weight=0.05..0.5"]) == 0
    assert capsys.readouterr().out == out  # deterministic for a seed
    assert main([*argv, "--param", "nonsense"]) == 1
    assert "NAME=LO..HI" in capsys.readouterr().err
    # The trace-shape flags of the replay: another block size or cache is another cluster;
    # the same trace in nanosecond strings tunes the same (the load is auto: the unit
    # cancels, and tune has no --time-unit).
    ns = tmp_path / "ns.jsonl"
    ns.write_text(
        "\n".join(
            json.dumps({**json.loads(line), "timestamp": str(round(r.arrival * 1e9))})
            for line, r in zip(p.read_text().splitlines(), REQS, strict=True)
        )
    )
    ns_argv = ["tune", str(ns), *argv[2:], "--param", "queue_weight=0.05..0.5"]
    assert main(ns_argv) == 0
    assert capsys.readouterr().out == out
    assert main([*ns_argv, "--block-tokens", "256"]) == 0
    assert capsys.readouterr().out != out
    assert main([*ns_argv, "--cache-blocks", "8"]) == 0
    assert capsys.readouterr().out != out
    with pytest.raises(SystemExit):
        main([*ns_argv, "--time-unit", "ns"])
    capsys.readouterr()

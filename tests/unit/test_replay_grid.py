"""``clusterrouting-replay grid``: one trace over cluster sizes and loads, and where a policy
places among the balanced ones in each cell (the claim's summary, shared)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import pytest

from clusterrouting import InvalidRecordError
from prefixcache.replay import (
    DEFAULT_CLUSTER,
    GridCell,
    format_grid,
    grid_to_json,
    main,
    run_grid,
    run_replay,
    synthetic_trace,
)
from prefixcache.replay._claim import format_claim, summarize, summary_row
from prefixcache.replay._report import ReplayResult

POLICIES = ("round-robin", "cache-cost", "random")


@pytest.fixture(scope="module")
def small() -> ReplayResult:
    reqs = synthetic_trace(seed=4, sessions=30, duration_s=200.0)
    return run_replay(reqs, trace_name="small", policies=POLICIES)


def _with(res: ReplayResult, rows: dict[str, tuple[float, float, float]]) -> ReplayResult:
    """``res`` with its policies replaced by ``name -> (mean, p99, max/mean)``, in order."""
    proto = res.policies[0]
    return attrs.evolve(
        res,
        policies=tuple(
            attrs.evolve(proto, name=n, ttft_mean_s=m, ttft_p99_s=p, max_over_mean_requests=b)
            for n, (m, p, b) in rows.items()
        ),
    )


def test_summary_ranks_among_the_balanced_and_names_who_is_better_on_both(
    small: ReplayResult,
) -> None:
    res = _with(
        small,
        {
            "ours": (1.0, 5.0, 1.0),
            "a": (0.9, 5.0, 1.1),  # lower mean, same p99: better on both
            "b": (0.5, 1.0, 1.2),  # lower on both but unbalanced: not ranked
            "c": (1.1, 4.5, 1.15),  # lower p99 only (at the limit: balanced): a trade
        },
    )
    s = summarize(res, policy="ours")
    assert s.lowest_mean is not None and s.lowest_mean.name == "a"
    assert s.lowest_p99 is not None and s.lowest_p99.name == "c"
    assert (s.rank_mean, s.rank_p99, s.balanced) == (2, 2, 3)
    assert [p.name for p in s.better_on_both] == ["a"]
    assert not s.leads
    row = summary_row("cell", s)
    assert row == (
        "| cell | a (0.900 s) | c (4.500 s) | 1.000 / 5.000 s | 2, 2 of 3 | a (0.9000 / 5.0000 s) |"
    )


def test_a_policy_leads_only_balanced_and_lowest_on_both(small: ReplayResult) -> None:
    leading = _with(small, {"ours": (1.0, 5.0, 1.0), "a": (1.0, 5.0, 1.0), "b": (2, 6, 1)})
    s = summarize(leading, policy="ours")
    assert s.leads and (s.rank_mean, s.rank_p99) == (1, 1)  # a tie counts in its favour
    assert s.better_on_both == ()
    unbalanced = _with(small, {"ours": (1.0, 5.0, 1.16), "a": (2.0, 6.0, 1.0)})
    s = summarize(unbalanced, policy="ours")
    assert (s.rank_mean, s.rank_p99) == (1, 1) and not s.leads
    assert "| 1.000 / 5.000 s | unbalanced (1.160x) | none |" in summary_row("x", s)
    nobody = _with(small, {"ours": (1.0, 5.0, 2.0)})
    s = summarize(nobody, policy="ours")
    assert s.lowest_mean is None and "| x | none | none |" in summary_row("x", s)
    with pytest.raises(InvalidRecordError) as exc:
        summarize(nobody, policy="cache-cost")
    assert exc.value.field == "policy" and "replayed: ours" in str(exc.value)


def test_leading_needs_the_lowest_mean_and_the_lowest_p99(small: ReplayResult) -> None:
    for other, ranks in (((2.0, 4.0, 1.0), (1, 2)), ((0.5, 6.0, 1.0), (2, 1))):
        s = summarize(_with(small, {"ours": (1.0, 5.0, 1.0), "a": other}), policy="ours")
        assert (s.rank_mean, s.rank_p99) == ranks and not s.leads
        assert s.better_on_both == ()  # a trade, not better on both


def test_the_balance_limit_is_inclusive_for_the_reported_policy_too(
    small: ReplayResult,
) -> None:
    at = summarize(_with(small, {"ours": (1.0, 5.0, 1.15), "a": (2, 6, 1)}), policy="ours")
    assert at.leads and "| 1, 1 of 2 |" in summary_row("x", at)
    over = summarize(_with(small, {"ours": (1.0, 5.0, 1.1500001), "a": (2, 6, 1)}), policy="ours")
    assert not over.leads and "| unbalanced (1.150x) |" in summary_row("x", over)
    grid = [
        GridCell(replicas=2, target_load=0.8, result=_with(small, {"ours": (1, 5, m)}))
        for m in (1.15, 1.1500001)
    ]
    assert "unbalanced (max/mean > 1.15) in 1." in format_grid(grid, policy="ours")


def test_a_policy_without_ttft_is_never_balanced_nor_leading(small: ReplayResult) -> None:
    res = _with(small, {"ours": (math.nan, math.nan, 1.0), "a": (1.0, 4.0, 1.0)})
    s = summarize(res, policy="ours")
    assert not s.ours.balanced and not s.leads
    assert s.lowest_mean is not None and s.lowest_mean.name == "a"
    assert res.best_policy == "a"


def test_ties_go_to_the_first_policy_in_table_order(small: ReplayResult) -> None:
    res = _with(small, {"ours": (2.0, 6.0, 1.0), "b": (1.0, 5.0, 1.0), "a": (1.0, 5.0, 1.0)})
    s = summarize(res, policy="ours")
    assert s.lowest_mean is not None and s.lowest_mean.name == "b"
    assert s.lowest_p99 is not None and s.lowest_p99.name == "b"
    assert [p.name for p in s.better_on_both] == ["b", "a"]


def test_the_claim_report_skips_the_summary_of_a_run_without_the_default(
    small: ReplayResult,
) -> None:
    res = _with(small, {"round-robin": (1.0, 5.0, 1.0), "random": (1.1, 5.5, 1.0)})
    lines = format_claim([res]).splitlines()
    assert lines[0].startswith("| case |") and lines[2] == ""  # the header, no row
    assert "### small" in lines


def test_a_grid_cell_refuses_a_bad_configuration(small: ReplayResult) -> None:
    with pytest.raises(InvalidRecordError) as exc:
        GridCell(replicas=0, target_load=0.8, result=small)
    assert exc.value.field == "replicas"
    with pytest.raises(InvalidRecordError) as exc:
        GridCell(replicas=2, target_load=-1.0, result=small)
    assert exc.value.field == "target_load"


def test_a_policy_named_twice_is_refused() -> None:
    reqs = synthetic_trace(seed=5, sessions=5, duration_s=30.0)
    with pytest.raises(InvalidRecordError) as exc:
        run_replay(reqs, policies=("prefix", "round-robin", "prefix"))
    assert exc.value.field == "policies" and "prefix" in str(exc.value)


def test_the_cells_run_on_the_given_cluster() -> None:
    reqs = synthetic_trace(seed=5, sessions=10, duration_s=60.0)
    model = attrs.evolve(DEFAULT_CLUSTER, cache_blocks=64, block_tokens=256)
    cells = run_grid(reqs, replicas=(3,), loads=(0.8,), model=model, policies=POLICIES)
    assert cells[0].result.model == attrs.evolve(model, replicas=3)
    assert "KV cache 64 blocks x 256 tokens per replica" in format_grid(cells)


def test_cells_run_in_order_and_each_is_the_replay_of_its_configuration() -> None:
    reqs = synthetic_trace(seed=5, sessions=20, duration_s=120.0)
    seen: list[str] = []
    cells = run_grid(
        reqs,
        trace_name="t",
        replicas=(2, 4),
        loads=(0.5, 1.2),
        policies=POLICIES,
        on_cell=lambda c: seen.append(c.label),
    )
    labels = [
        "2 replicas, load 0.5",
        "2 replicas, load 1.2",
        "4 replicas, load 0.5",
        "4 replicas, load 1.2",
    ]
    assert [c.label for c in cells] == labels == seen
    assert [c.result.model.replicas for c in cells] == [2, 2, 4, 4]
    own = run_replay(
        reqs,
        trace_name="t",
        model=cells[3].result.model,
        policies=POLICIES,
        target_load=1.2,
    )
    assert cells[3].result.speedup == own.speedup
    for p, q in zip(cells[3].result.policies, own.policies, strict=True):
        assert (p.name, p.ttft_mean_s, p.ttft_p99_s, p.requests_per_replica) == (
            q.name,
            q.ttft_mean_s,
            q.ttft_p99_s,
            q.requests_per_replica,
        )
    # A higher load on the same cluster is a faster replay of the same arrivals.
    assert cells[1].result.speedup > cells[0].result.speedup

    text = format_grid(cells)
    summaries = [summarize(c.result) for c in cells]
    for c, s in zip(cells, summaries, strict=True):
        assert summary_row(c.label, s) in text
    leads = sum(s.leads for s in summaries)
    beaten = sum(bool(s.better_on_both) for s in summaries)
    unbalanced = sum(s.ours.max_over_mean_requests > 1.15 for s in summaries)
    assert (
        f"cache-cost leads (balanced, with the lowest mean and p99 TTFT of the balanced "
        f"policies) in {leads} of 4 cells; a balanced policy is better on both in {beaten}; "
        f"cache-cost is unbalanced (max/mean > 1.15) in {unbalanced}."
    ) in text
    doc = grid_to_json(cells, policy="round-robin")
    assert doc["policy"] == "round-robin"
    assert [(x["replicas"], x["target_load"]) for x in doc["cells"]] == [
        (2, 0.5),
        (2, 1.2),
        (4, 0.5),
        (4, 1.2),
    ]
    rr = [summarize(c.result, policy="round-robin") for c in cells]
    assert [x["leads"] for x in doc["cells"]] == [s.leads for s in rr]
    assert doc["leads"] == sum(s.leads for s in rr) and doc["schema_version"] == 1
    for x, s in zip(doc["cells"], rr, strict=True):
        ranked = s.ours.balanced
        assert x["rank_mean"] == (s.rank_mean if ranked else None)
        assert x["rank_p99"] == (s.rank_p99 if ranked else None)
        assert x["better_on_both"] == [p.name for p in s.better_on_both]
    assert doc["cells"][0]["result"]["requests"] == len(reqs)


@pytest.mark.parametrize(
    ("replicas", "loads", "field"),
    [
        ((), (0.8,), "replicas"),
        ((2,), (), "target_load"),
        ((0,), (0.8,), "replicas"),
        ((True,), (0.8,), "replicas"),
        ((2.0,), (0.8,), "replicas"),
        ((2,), (0.0,), "target_load"),
        ((2,), (math.nan,), "target_load"),
        ((2,), (math.inf,), "target_load"),
        ((2,), (False,), "target_load"),
    ],
)
def test_a_bad_grid_is_refused_before_any_replay(
    replicas: tuple[int, ...], loads: tuple[float, ...], field: str
) -> None:
    reqs = synthetic_trace(seed=5, sessions=5, duration_s=30.0)
    with pytest.raises(InvalidRecordError) as exc:
        run_grid(reqs, replicas=replicas, loads=loads, policies=("round-robin",))
    assert exc.value.field == field


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    p = tmp_path / "chat.jsonl"
    with p.open("w") as fh:
        for r in synthetic_trace(seed=6, sessions=15, duration_s=90.0):
            fh.write(
                json.dumps(
                    {
                        "timestamp": int(r.arrival * 1000),
                        "input_length": r.input_tokens,
                        "output_length": r.output_tokens,
                        "hash_ids": list(r.blocks),
                    }
                )
                + "\n"
            )
    return p


def test_command_prints_the_table_the_tally_and_a_line_per_cell(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["grid", str(trace), "--replicas", "2,3", "--target-load", "0.6"]
    assert main([*args, "--policies", "round-robin,cache-cost"]) == 0
    out, err = capsys.readouterr()
    assert "chat.jsonl:" in out
    assert "| 2 replicas, load 0.6 |" in out and "| 3 replicas, load 0.6 |" in out
    assert "cache-cost leads" in out and "of 2 cells" in out
    assert "[1/2] 2 replicas, load 0.6" in err and "[2/2] 3 replicas, load 0.6" in err
    assert main([*args, "--policies", "round-robin,random", "--policy", "random"]) == 0
    assert "| rank of random (mean, p99) |" in capsys.readouterr().out
    assert main([*args, "--policies", "round-robin,random", "--policy", "random", "--json"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["policy"] == "random" and len(doc["cells"]) == 2
    assert [p["name"] for p in doc["cells"][1]["result"]["policies"]] == ["round-robin", "random"]
    assert (
        main([*args, "--policies", "round-robin", "--policy", "round-robin", "--no-progress"]) == 0
    )
    assert capsys.readouterr().err == ""


def test_command_usage_and_trace_errors(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (
        ["--replicas", "0"],
        ["--replicas", "two"],
        ["--replicas", ""],
        ["--target-load", "-1"],
        ["--target-load", "nan"],
        ["--target-load", "0.5,x"],
        ["--target-load", "inf"],
        ["--policies", "prefix,round-robin,prefix"],
        ["--policies", "round-robin", "--policy", "cache-cost"],  # not replayed
        ["--policy", "nope"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(["grid", str(trace), *bad])
        assert exc.value.code == 2
    capsys.readouterr()
    assert main(["grid", str(trace) + ".missing"]) == 1
    assert "no such trace file" in capsys.readouterr().err
    assert main(["grid", str(trace), "--block-tokens", "0", "--no-progress"]) == 1
    assert "block_tokens" in capsys.readouterr().err
    empty = trace.with_name("empty.jsonl")
    empty.write_text("")
    assert main(["grid", str(empty), "--no-progress"]) == 1
    assert "empty.jsonl has no requests" in capsys.readouterr().err

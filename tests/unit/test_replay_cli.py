"""The ``clusterrouting-replay`` command: table, --json, --plot, flags and errors."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest

from prefixcache.replay import POLICY_NAMES, main, synthetic_trace

LINES = [
    {"timestamp": 0, "input_length": 8, "output_length": 10, "hash_ids": [1, 2]},
    {"timestamp": 0, "input_length": 8, "output_length": 10, "hash_ids": [1, 3]},
    {"timestamp": 1000, "input_length": 12, "output_length": 0, "hash_ids": [1, 2, 4]},
    {"timestamp": 1000, "input_length": 4, "output_length": 0, "hash_ids": [1]},
]


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in LINES) + "\n")
    return p


HAND_FLAGS = [
    "--replicas",
    "2",
    "--cache-blocks",
    "inf",
    "--block-tokens",
    "4",
    "--prefill-rate",
    "1000",
    "--decode-rate",
    "10",
    "--decode-s-per-request",
    "0",
    "--decode-s-per-context-token",
    "0",
    "--speedup",
    "1",
]


def test_json_output_has_the_documented_keys(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main([str(trace), "--json", "--no-progress", "--policies", "round-robin", *HAND_FLAGS])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["trace"] == "tiny.jsonl"
    assert doc["requests"] == 4
    assert doc["ideal_hit_ratio"] == 0.5
    (p,) = doc["policies"]
    for key in (
        "name",
        "hit_ratio",
        "ttft_mean_s",
        "ttft_p50_s",
        "ttft_p99_s",
        "max_over_mean_requests",
        "decisions_per_s",
    ):
        assert key in p
    assert p["name"] == "round-robin"
    assert p["hit_ratio"] == 3 / 8  # hand-computed in test_replay_sim.py
    assert p["ttft_mean_s"] == pytest.approx((0.108 + 0.108 + 0.112 + 0.109) / 4)
    assert doc["cluster"]["cache_blocks"] is None
    assert doc["schema_version"] == 2
    assert doc["default_policy"] == "cache-cost"
    assert doc["best_policy"] == "round-robin"
    for key in ("reachable_hit_ratio", "regret_ratio", "ttft_p90_s", "throughput_tokens_per_s"):
        assert isinstance(p[key], float)


def test_table_and_progress(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([str(trace), "--policies", "round-robin,cache-cost", *HAND_FLAGS])
    assert rc == 0
    cap = capsys.readouterr()
    assert "ideal hit ratio" in cap.out
    assert "round-robin" in cap.out and "cache-cost" in cap.out
    assert "0.3750" in cap.out
    assert "[2/2] cache-cost" in cap.err  # progress goes to stderr, never stdout
    assert "[1/2]" not in cap.out


def test_plot_writes_a_png(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.png"
    rc = main(
        [
            str(trace),
            "--no-progress",
            "--policies",
            "round-robin,random",
            "--plot",
            str(out),
            *HAND_FLAGS,
        ]
    )
    assert rc == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error(
    trace: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    rc = main([str(trace), "--no-progress", "--plot", str(tmp_path / "x.png"), *HAND_FLAGS])
    assert rc == 1
    assert "matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_time_unit_reads_another_clock(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The tiny trace's instants as absolute nanoseconds in strings replay exactly as the
    # milliseconds do, with --time-unit ns (and --speedup 1: the unit matters).
    ns = tmp_path / "tiny_ns.jsonl"
    start = 1_753_780_607_550_317_897
    ns.write_text(
        "\n".join(
            json.dumps({**x, "timestamp": str(start + x["timestamp"] * 1_000_000)}) for x in LINES
        )
    )

    def replay(path: Path, *unit: str) -> object:
        assert (
            main(
                [
                    str(path),
                    "--json",
                    "--no-progress",
                    "--policies",
                    "round-robin",
                    *HAND_FLAGS,
                    *unit,
                ]
            )
            == 0
        )
        doc = json.loads(capsys.readouterr().out)
        return [
            {k: v for k, v in p.items() if k not in ("decisions_per_s", "routing_s", "wall_s")}
            for p in doc["policies"]
        ]

    assert replay(ns, "--time-unit", "ns") == replay(trace) != replay(ns, "--time-unit", "us")


def test_usage_errors(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (
        ["--policies", "round-robin,nope"],
        ["--speedup", "0"],
        ["--cache-blocks", "-3"],
        ["--observe", "sometimes"],
        ["--time-unit", "minutes"],
        ["--chars-per-token", "x"],
        ["--slo", "-1"],
        ["--slo", "0"],
        ["--slo", "nan"],
        ["--slo", "inf"],
        ["--slo", "soon"],
    ):
        with pytest.raises(SystemExit) as ei:
            main([str(trace), *bad])
        assert ei.value.code == 2
    capsys.readouterr()
    assert main([str(trace) + ".missing", "--no-progress"]) == 1
    assert "no such trace" in capsys.readouterr().err
    assert main([str(trace), "--no-progress", "--replicas", "0"]) == 1
    assert "replicas" in capsys.readouterr().err
    assert main([str(trace), "--no-progress", "--chars-per-token", "0"]) == 1
    assert "chars_per_token" in capsys.readouterr().err


def test_bad_trace_line_names_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"timestamp": 0, "input_length": "x", "output_length": 1, "hash_ids": []}\n')
    assert main([str(p), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "line 1" in err and "input_length" in err
    huge = '{"timestamp": "%s", "input_length": 1, "output_length": 1, "hash_ids": []}\n'
    p.write_text(huge % ("9" * 400))  # beyond any float: an error, not a traceback
    assert main([str(p), "--no-progress", "--time-unit", "ns"]) == 1
    err = capsys.readouterr().err
    assert "line 1" in err and "timestamp" in err


def test_a_trace_without_requests_is_refused_by_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Counterfactual: the report printed a table of NaNs ("nans", "nanx the mean") and
    # tune a ranking of them, exit 0, for an empty file or one of blank lines.
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n\n")):
        p = str(tmp_path / name)
        (tmp_path / name).write_text(text)
        for argv in (
            [p, "--no-progress"],
            [p, "--kv-events", "--no-progress"],
            ["grid", p, "--no-progress"],
            ["tune", p, "--budget", "2"],
        ):
            assert main(argv) == 1
            out, err = capsys.readouterr()
            assert out == ""
            assert f"{name} has no requests: nothing to replay" in err, (argv, err)


def test_the_summary_gives_no_ratio_to_round_robins_zero_hits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Counterfactual: "infx the hits" when round-robin had none.
    line = '{"timestamp": %d, "input_length": %d, "output_length": 2, "hash_ids": %s}'
    p = tmp_path / "t.jsonl"
    flags = ["--policies", "cache-cost,round-robin", "--replicas", "2", "--speedup", "1"]
    # The second request extends the first, after it ended: round-robin sends it to the
    # other replica (no hits), cache-cost to the one holding its first two blocks.
    p.write_text(line % (0, 1024, [1, 2]) + "\n" + line % (10_000, 1536, [1, 2, 3]) + "\n")
    assert main([str(p), *flags, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "lower p99, hit ratio 0.4000 against none\n" in out and "infx" not in out
    p.write_text(line % (0, 1024, [1, 2]) + "\n" + line % (10_000, 1024, [3, 4]) + "\n")
    assert main([str(p), *flags, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "lower p99, no hits\n" in out and "infx" not in out


def test_every_policy_runs_on_a_synthetic_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reqs = synthetic_trace(seed=3, sessions=60, duration_s=120.0)
    p = tmp_path / "synth.jsonl"
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
            for r in reqs
        )
    )
    rc = main([str(p), "--json", "--no-progress", "--replicas", "3"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert [x["name"] for x in doc["policies"]] == list(POLICY_NAMES)
    for x in doc["policies"]:
        assert 0.0 <= x["hit_ratio"] <= doc["ideal_hit_ratio"]
        assert sum(x["requests_per_replica"]) == len(reqs)


def test_kv_events_compares_each_approximate_policy_with_its_precise_counterpart(
    trace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import prefixcache.replay._cli as cli
    from prefixcache.replay import ClusterModel

    small = synthetic_trace(seed=1, sessions=30, duration_s=60.0)
    monkeypatch.setattr(cli, "eviction_case", lambda seed: (small, ClusterModel(cache_blocks=8)))
    rc = main([str(trace), "--kv-events", "--no-progress", "--kv-event-loss", "0.1", *HAND_FLAGS])
    assert rc == 0
    out = capsys.readouterr().out
    assert "loss 0.1" in out
    for approx, precise in (
        ("cache-cost", "cache-cost-precise"),
        ("llm-d-default", "llm-d-precise"),
        ("dynamo-kv-approx", "dynamo-kv"),
    ):
        assert sum(1 for line in out.splitlines() if approx in line and precise in line) == 2
    rc = main([str(trace), "--kv-events", "--json", "--no-progress", *HAND_FLAGS])
    doc = json.loads(capsys.readouterr().out)
    (tiny, synth) = doc["kv_events"]
    assert tiny["trace"] == "tiny.jsonl" and synth["cluster"]["cache_blocks"] == 8
    assert {p["name"] for p in synth["policies"]} >= {"dynamo-kv", "dynamo-kv-approx"}
    assert synth["cluster"]["restarts"] == []
    # --restart-every restarts the eviction case's engines too, on its own time line.
    rc = main([str(trace), "--kv-events", "--json", "--no-progress", "--restart-every", "1"])
    doc = json.loads(capsys.readouterr().out)
    (_, synth) = doc["kv_events"]
    restarts = synth["cluster"]["restarts"]
    assert restarts[:3] == [[1.0, 0], [2.0, 1], [3.0, 2]]


def test_policies_all_slo_and_restarts(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            str(trace),
            "--json",
            "--no-progress",
            "--policies",
            "all",
            "--slo",
            "0.11",
            "--restart-every",
            "0.5",
            *HAND_FLAGS,
        ]
    )
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in doc["policies"]] == list(POLICY_NAMES)
    assert doc["slo_s"] == 0.11
    assert all(0.0 <= p["slo_share"] <= 1.0 for p in doc["policies"])
    assert doc["cluster"]["restarts"] == [[0.5, 0], [1.0, 1]]


def test_decision_log_explains_sampled_decisions_without_prompt_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reqs = synthetic_trace(seed=3, sessions=40, duration_s=60.0)
    p = tmp_path / "synth.jsonl"
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
            for r in reqs
        )
    )
    log = tmp_path / "decisions.jsonl"
    argv = [str(p), "--no-progress", "--policies", "cache-cost,prefix,round-robin"]
    rc = main([*argv, "--decision-log", str(log), "--decision-every", "5", "--replicas", "3"])
    assert rc == 0
    capsys.readouterr()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    by_policy = {x["policy"] for x in lines}
    assert by_policy == {"cache-cost", "prefix"}  # round-robin has nothing to explain
    n = len(reqs)
    assert sum(1 for x in lines if x["policy"] == "cache-cost") == len(range(0, n, 5))
    for x in lines:
        assert x["request"] % 5 == 0
        e = x["explanation"]
        assert e["chosen"] in {c["key"] for c in e["candidates"]}
        assert "hash_ids" not in json.dumps(x) and "blocks" not in e
    cost = next(x for x in lines if x["policy"] == "cache-cost")["explanation"]
    assert {"uncached_tokens", "queue_term", "load_term", "cost", "signals"} <= set(
        cost["candidates"][0]
    )
    shared = 0
    for x in lines:
        if x["policy"] == "cache-cost":
            e = x["explanation"]
            assert e["warm_copies"] >= 0
            # The backlog weight the decision used: 0.5 for a shared prefix, else 0.2
            # while every cache had room (less than half full, the cluster not
            # saturated), else 0.1.
            room = 0.2 if e["caches_have_room"] else 0.1
            assert e["params"]["queue_weight"] == (0.5 if e["shared_prefix"] else room)
            shared += e["shared_prefix"]
    assert 0 < shared < len(range(0, n, 5))  # both kinds are sampled
    sel = next(x for x in lines if x["policy"] == "prefix")["explanation"]
    assert sel["rule"] in ("hot", "cold_order", "least_loaded")


def test_claim_refuses_a_negative_seed_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["claim", "--seeds", "-1"])
    assert exc.value.code == 2
    assert "--seeds must be >= 0" in capsys.readouterr().err


def each_command(trace: Path) -> dict[str, list[str]]:
    """A short run of ``trace`` by each command that reads one (its name -> its argv)."""
    p = str(trace)
    return {
        "clusterrouting-replay": [p, "--no-progress", "--policies", "round-robin"],
        "clusterrouting-replay grid": [
            *("grid", p, "--no-progress", "--replicas", "2", "--target-load", "0.5"),
            *("--policies", "cache-cost"),
        ],
        "clusterrouting-replay tune": [
            *("tune", p, "--replicas", "2", "--budget", "1"),
            *("--param", "queue_weight=0.05..0.5"),
        ],
    }


def test_a_re_keyed_trace_is_reported_as_the_command_s_own_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Block 4 follows 2 and then 3: not prefix-chained, so re-keyed (one fresh id). Each
    # command says so on stderr in its own name, once, with no Python warning line, and
    # runs on; nothing is left for the warnings machinery to show.
    p = tmp_path / "content_ids.jsonl"
    rows = [[1, 2, 4], [1, 3, 4], [1, 2, 4]]
    p.write_text(
        "\n".join(
            json.dumps({"timestamp": 10 * k, "input_length": 12, "output_length": 2, "hash_ids": c})
            for k, c in enumerate(rows)
        )
        + "\n"
    )
    expected = (
        ": warning: 1 block ids of the trace stood under more than one prefix (hash_ids not"
        " prefix-chained); re-keyed per prefix with 1 fresh ids\n"
    )
    runs = each_command(p)
    for prog, argv in runs.items():
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            assert main([*argv, "--block-tokens", "4"]) == 0
        err = capsys.readouterr().err
        assert err == prog + expected
        assert shown == []


def test_a_trace_whose_blocks_do_not_match_block_tokens_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ten 16-token ids per 160-token prompt (the last one partial in some): replayed at the
    # default 512 tokens per id, each cached id would count for 512 tokens. Each command
    # names the flags that fit (16-token blocks, the same KV capacity: 16,384 x 512 / 16
    # blocks) and runs on; at --block-tokens 16 it says nothing.
    p = tmp_path / "small_blocks.jsonl"
    p.write_text(
        "\n".join(
            json.dumps(
                {
                    "timestamp": 10 * k,
                    "input_length": 150 + k % 10,
                    "output_length": 2,
                    "hash_ids": [1, *range(100 * k + 2, 100 * k + 11)],
                }
            )
            for k in range(8)
        )
        + "\n"
    )
    expected = (
        ": warning: the trace has a median of 15 prompt tokens per hash id, but --block-tokens"
        " is 512 (tokens per id): if its ids are 16-token blocks, pass --block-tokens 16"
        " --cache-blocks 524288 (the same KV capacity in tokens)\n"
    )
    runs = each_command(p)
    for prog, argv in runs.items():
        assert main(argv) == 0
        assert capsys.readouterr().err == prog + expected
        assert main([*argv, "--block-tokens", "16"]) == 0
        assert capsys.readouterr().err == ""


def test_the_block_size_note_reads_the_median_and_scales_the_capacity() -> None:
    from prefixcache.replay import BUNDLED_TRACE, Request, load_trace
    from prefixcache.replay._args import block_size_note

    def trace(*per_id: int) -> list[Request]:  # one 4-id request per entry
        return [
            Request(
                arrival=k,
                input_tokens=4 * t,
                output_tokens=1,
                blocks=(4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3),
            )
            for k, t in enumerate(per_id)
        ]

    # Within half to twice block_tokens: nothing to say (the bounds included).
    for t in (256, 512, 1024):
        assert block_size_note(trace(t), block_tokens=512, cache_blocks=16384) is None
    assert block_size_note(load_trace(BUNDLED_TRACE), block_tokens=512, cache_blocks=16384) is None
    # The median decides, not one outlier; the nearest power of two is suggested.
    note = block_size_note(trace(30, 34, 5000), block_tokens=512, cache_blocks=16384)
    assert (
        note is not None
        and "median of 34 " in note
        and "--block-tokens 32 --cache-blocks 262144" in note
    )
    note = block_size_note(trace(2048, 2100, 1), block_tokens=512, cache_blocks=None)
    assert note is not None and note.endswith(
        "pass --block-tokens 2048 (the same KV capacity in tokens)"
    )
    assert block_size_note(trace(255), block_tokens=512, cache_blocks=3) == (
        "the trace has a median of 255 prompt tokens per hash id, but --block-tokens is 512"
        " (tokens per id): if its ids are 256-token blocks, pass --block-tokens 256"
        " --cache-blocks 6 (the same KV capacity in tokens)"
    )
    # The capacity is rounded up: no cache stays none, a fraction of a block is one.
    note = block_size_note(trace(30), block_tokens=512, cache_blocks=0)
    assert note is not None and "--block-tokens 32 --cache-blocks 0 (" in note
    note = block_size_note(trace(4096), block_tokens=16, cache_blocks=1)
    assert note is not None and "--block-tokens 4096 --cache-blocks 1 (" in note
    note = block_size_note(trace(4096), block_tokens=16, cache_blocks=257)
    assert note is not None and "--block-tokens 4096 --cache-blocks 2 (" in note
    # No ids at all: nothing to compare.
    empty = [Request(arrival=0, input_tokens=10, output_tokens=1, blocks=())]
    assert block_size_note(empty, block_tokens=512, cache_blocks=16384) is None

"""The report ends with what a reader should take from it: the best policy vs round-robin."""

from __future__ import annotations

from prefixcache.replay import format_table, run_replay, synthetic_trace


def test_summary_names_the_lowest_ttft_policy_and_its_gain_over_round_robin() -> None:
    reqs = synthetic_trace(seed=3, sessions=120, duration_s=600.0)
    result = run_replay(reqs, policies=("round-robin", "cache-cost"))
    best = min(result.policies, key=lambda p: p.ttft_mean_s)
    rr = result.policy("round-robin")
    text = format_table(result)
    assert f"lowest mean TTFT: {best.name} ({best.ttft_mean_s:.3f}s" in text
    if best.name != "round-robin":
        assert f"vs round-robin: {rr.ttft_mean_s / best.ttft_mean_s:.2f}x lower mean TTFT" in text
    else:
        assert "vs round-robin" not in text


def test_no_comparison_line_when_round_robin_was_not_replayed() -> None:
    reqs = synthetic_trace(seed=4, sessions=50, duration_s=300.0)
    text = format_table(run_replay(reqs, policies=("least-loaded",)))
    assert "lowest mean TTFT: least-loaded" in text
    assert "vs round-robin" not in text


def test_claim_report_ranks_balanced_policies_and_names_the_leaders() -> None:
    from prefixcache.replay._claim import format_claim

    reqs = synthetic_trace(seed=4, sessions=50, duration_s=300.0)
    res = run_replay(reqs, trace_name="tiny", policies=("round-robin", "cache-cost", "random"))
    text = format_claim([res])
    balanced = [p for p in res.policies if p.max_over_mean_requests <= 1.15]
    best = min(balanced, key=lambda p: p.ttft_mean_s)
    assert f"| tiny | {best.name} ({best.ttft_mean_s:.3f} s) |" in text
    assert "### tiny" in text
    ours = res.policy("cache-cost")
    assert f"| cache-cost | {ours.ideal_fraction:.1%} | {ours.ttft_mean_s:.3f} |" in text


def test_claim_over_seeds_averages_each_policy_and_ranks_the_balanced_ones() -> None:
    from prefixcache.replay._claim import format_seeds, seeded_cases

    names = [c.name for c in seeded_cases(0)]
    assert names == [
        "1 system prompt x 400, 2 replicas",
        "1 system prompt x 400, 8 replicas",
        "8 Zipf system prompts x 2000, 8 repl.",
        "synthetic chat",
        "eviction case (KV ~ working set)",
    ]
    assert seeded_cases(1)[0].requests != seeded_cases(0)[0].requests  # the seed draws them
    per_seed = [
        [
            run_replay(
                synthetic_trace(seed=s, sessions=40, duration_s=200.0),
                trace_name="tiny",
                policies=("round-robin", "cache-cost", "random"),
            )
        ]
        for s in (4, 5)
    ]
    text = format_seeds(per_seed)
    assert "| case (mean over 2 seeds) |" in text

    def avg(name: str, attr: str) -> float:
        return sum(getattr(r[0].policy(name), attr) for r in per_seed) / 2

    balanced = [
        n
        for n in ("round-robin", "cache-cost", "random")
        if all(r[0].policy(n).max_over_mean_requests <= 1.15 for r in per_seed)
    ]
    best = min(balanced, key=lambda n: avg(n, "ttft_mean_s"))
    assert f"| tiny | {best} ({avg(best, 'ttft_mean_s'):.4f} s) |" in text
    ours = f"{avg('cache-cost', 'ttft_mean_s'):.4f} / {avg('cache-cost', 'ttft_p99_s'):.4f} s"
    assert ours in text


def test_summary_says_why_the_default_is_not_the_best_balanced_policy() -> None:
    import attrs

    reqs = synthetic_trace(seed=4, sessions=50, duration_s=300.0)
    res = run_replay(reqs, policies=("round-robin", "cache-cost"))
    rr, ours = res.policy("round-robin"), res.policy("cache-cost")
    # The default faster but unbalanced: round-robin is the best balanced policy, and the
    # report says the default was left out for its balance, not that it was slower.
    fast = attrs.evolve(ours, ttft_mean_s=rr.ttft_mean_s / 2, max_over_mean_requests=1.37)
    text = format_table(attrs.evolve(res, policies=(rr, fast)))
    assert "best policy (lowest mean TTFT at max/mean <= 1.15): round-robin" in text
    assert "the default cache-cost is unbalanced here (busiest replica 1.37x" in text
    assert "beats the default" not in text
    # The default balanced but slower: the best balanced policy beats it.
    slow = attrs.evolve(ours, ttft_mean_s=rr.ttft_mean_s * 2, max_over_mean_requests=1.0)
    text = format_table(attrs.evolve(res, policies=(rr, slow)))
    assert "round-robin beats the default cache-cost here" in text


def test_claim_report_names_the_policies_better_on_both_counts() -> None:
    import attrs

    from prefixcache.replay._claim import format_claim, format_seeds

    reqs = synthetic_trace(seed=4, sessions=50, duration_s=300.0)
    res = run_replay(reqs, trace_name="tiny", policies=("round-robin", "cache-cost", "random"))
    rr, ours, rnd = (res.policy(n) for n in ("round-robin", "cache-cost", "random"))
    m, p = ours.ttft_mean_s, ours.ttft_p99_s

    def last_cell(text: str) -> str:
        row = next(line for line in text.splitlines() if line.startswith("| tiny |"))
        return row.rstrip(" |").rsplit("|", 1)[1].strip()

    # round-robin equal on the mean and lower on the p99 beats it on both; random, lower
    # on the mean but higher on the p99, only trades; an unbalanced policy is not listed.
    cases = [
        (attrs.evolve(rr, ttft_mean_s=m, ttft_p99_s=p / 2), "round-robin"),
        (attrs.evolve(rr, ttft_mean_s=m, ttft_p99_s=p), "none"),
        (attrs.evolve(rr, ttft_mean_s=m / 2, ttft_p99_s=p / 2, max_over_mean_requests=1.2), "none"),
    ]
    trade = attrs.evolve(rnd, ttft_mean_s=m / 2, ttft_p99_s=p * 2, max_over_mean_requests=1.0)
    for rr_case, expected in cases:
        one = attrs.evolve(res, policies=(rr_case, ours, trade))
        for text in (format_claim([one]), format_seeds([[one], [one]])):
            cell = last_cell(text)
            assert cell.startswith(expected), (cell, expected)
            assert "random" not in cell
    one = attrs.evolve(res, policies=(cases[0][0], ours, trade))
    assert f"round-robin ({m:.4f} / {p / 2:.4f} s)" in last_cell(format_claim([one]))


def test_the_policy_column_fits_the_longest_name() -> None:
    # Counterfactual: a fixed 20-character column shifted the row of a longer name
    # (llm-d-default-current) one place right of the headers.
    import attrs

    reqs = synthetic_trace(seed=4, sessions=50, duration_s=300.0)
    res = run_replay(reqs, policies=("round-robin",))
    long = attrs.evolve(res.policy("round-robin"), name="a-policy-name-of-30-characters")
    lines = format_table(attrs.evolve(res, policies=(res.policy("round-robin"), long))).splitlines()
    head = next(line for line in lines if line.startswith("policy"))
    rows = [line for line in lines if line.startswith(("round-robin ", "a-policy-name"))]
    assert len(rows) == 2 and all(len(row) == len(head) for row in rows)

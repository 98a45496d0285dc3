"""bench_policies (the hook of ``make bench``) and the Request record's validation."""

from __future__ import annotations

import json
import math

import pytest

from clusterrouting import InvalidRecordError
from prefixcache.replay import (
    PEER_POLICIES,
    POLICY_NAMES,
    ClusterModel,
    Request,
    bench_policies,
    run_replay,
    synthetic_trace,
)


def test_bench_policies_reports_every_library_policy() -> None:
    reqs = synthetic_trace(seed=1, sessions=40, duration_s=60.0)
    rates = bench_policies(reqs, model=ClusterModel(replicas=4))
    assert list(rates) == [n for n in POLICY_NAMES if n not in PEER_POLICIES]
    assert "cache-cost" in rates and "sglang-cache-aware" not in rates
    assert all(r > 0 for r in rates.values())
    only = bench_policies(reqs, policies=["prefix"], model=ClusterModel(replicas=4))
    assert list(only) == ["prefix"]


def test_request_validation() -> None:
    Request(arrival=0, input_tokens=0, output_tokens=0, blocks=())
    with pytest.raises(InvalidRecordError, match="arrival"):
        Request(arrival=-1.0, input_tokens=1, output_tokens=1, blocks=())
    with pytest.raises(InvalidRecordError, match="arrival"):
        Request(arrival=math.nan, input_tokens=1, output_tokens=1, blocks=())
    with pytest.raises(InvalidRecordError, match="output_tokens"):
        Request(arrival=0.0, input_tokens=1, output_tokens=-2, blocks=())
    with pytest.raises(InvalidRecordError, match="blocks"):
        Request(arrival=0.0, input_tokens=1, output_tokens=1, blocks=[1])  # type: ignore[arg-type]


def test_json_document_is_strict_json() -> None:
    # An empty trace has no TTFTs (NaN) and no routing time: strict JSON gets nulls.
    res = run_replay([], policies=["round-robin"], speedup=1.0)
    text = json.dumps(res.to_json(), allow_nan=False)
    doc = json.loads(text)
    assert doc["requests"] == 0
    assert doc["policies"][0]["ttft_mean_s"] is None

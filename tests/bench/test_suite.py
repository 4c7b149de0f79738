"""``ctxproto bench suite``: the workloads' sizes, the paths asked for, and serving under
a KV budget."""

import pytest

from ctxproto.bench.chat import Serving, kv_bytes_per_token, run_paths
from ctxproto.bench.chat_workload import ChatTurn, SessionScript
from ctxproto.bench.suite import WORKLOADS, select_workloads
from ctxproto.cli.main import main
from ctxproto.errors import ConfigError


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w.name)
def test_quick_sizes_are_smaller_and_a_llama_slot_holds_every_windowed_prompt(workload):
    full, quick = workload.full, workload.quick
    assert quick.sessions * quick.turns < full.sessions * full.turns
    for size in (full, quick):
        if size.kv_budget_tokens is not None:
            assert size.window_tokens is not None
            # slots sharing one buffer each may fill it; otherwise each owns an equal part
            shared = size.llama_kv_unified
            slot = size.kv_budget_tokens // (1 if shared else size.llama_parallel)
            assert size.window_tokens + 32 <= slot  # the window plus the answer
    assert "ctxproto" in workload.paths


def test_the_concurrent_workload_serves_round_robin_under_a_budget_without_generate():
    (concurrent,) = [w for w in WORKLOADS if w.name == "concurrent"]
    assert concurrent.round_robin and concurrent.full.sessions == 16
    assert concurrent.full.kv_budget_tokens is not None
    assert "generate" not in concurrent.paths


def test_paths_narrow_every_workload_to_the_named_ones_it_serves():
    workloads = select_workloads("long,concurrent", "engine,llama_cpp,ctxproto")
    assert [w.name for w in workloads] == ["long", "concurrent"]
    assert [w.paths for w in workloads] == [("engine", "llama_cpp", "ctxproto")] * 2
    everything = select_workloads("support,concurrent", ",".join(WORKLOADS[0].paths))
    assert everything[0].paths == WORKLOADS[0].paths
    assert "generate" not in everything[1].paths  # the concurrent workload still sits it out


@pytest.mark.parametrize(
    ("workloads", "paths", "key", "says"),
    [
        ("long", "engine,ctxproto,beam", "--paths", "unknown: beam"),
        ("long", "engine,llama_cpp", "--paths", "must name ctxproto"),
        ("long", "ctxproto,ctxproto_llama_cpp", "--paths", "at least one of generate"),
        ("support,concurrent", "generate,ctxproto", "--paths", "the concurrent workload"),
        ("long,short", "engine,ctxproto", "--workloads", "unknown workload short"),
        ("", "engine,ctxproto", "--workloads", "none named"),
    ],
)
def test_bad_paths_or_workloads_are_a_config_error_naming_the_key(workloads, paths, key, says):
    with pytest.raises(ConfigError, match=says) as raised:
        select_workloads(workloads, paths)
    assert raised.value.key == key


def test_the_cli_refuses_bad_paths_with_exit_2_before_serving_anything(capsys):
    assert main(["bench", "suite", "--quick", "--paths", "generate,ctxproto,nope"]) == 2
    error = capsys.readouterr().err.replace("\n", "")
    assert "paths" in error and "unknown: nope" in error


@pytest.mark.models
@pytest.mark.slow
def test_under_a_kv_budget_round_robin_sessions_evict_one_another():
    filler = " ".join(f"word{n}" for n in range(60))  # about 200 tokens per user turn
    scripts = [
        SessionScript(
            f"s{i}", tuple(ChatTurn(f"User {i}, turn {t}: {filler}", "chat") for t in range(2))
        )
        for i in range(3)
    ]
    # Room for the shared 1.1k-token system prompt and about two user turns: the
    # three sessions' turns do not fit together.
    budget = 1_600
    result = run_paths(
        scripts,
        max_new_tokens=2,
        paths=("engine", "ctxproto"),
        serving=Serving(round_robin=True, kv_budget_tokens=budget),
    )
    engine = result["prefix_cache_by_path"]["engine"]
    assert engine["max_bytes"] == budget * kv_bytes_per_token()
    assert engine["evictions"] > 0
    assert result["llama_server_by_path"] == {}  # no llama.cpp path was asked for
    order = [(t["session"], t["turn"]) for t in result["turns"]]
    assert order == [("s0", 1), ("s1", 1), ("s2", 1), ("s0", 2), ("s1", 2), ("s2", 2)]

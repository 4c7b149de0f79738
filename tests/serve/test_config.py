"""Serve configs: examples load, mistakes exit 2 naming file and key, the CLI serves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ctxproto.cli.main import main
from ctxproto.errors import ConfigError
from ctxproto.runtime.engine import QUANTIZE_MODES
from ctxproto.serve import load_serve_config
from ctxproto.serve.config import LocalUpstreamConfig
from ctxproto.session import BackendConfig

EXAMPLES = Path(__file__).parents[2] / "examples" / "serve"


@pytest.mark.parametrize("name", ["proxy.yaml", "proxy-remote.yaml"])
def test_examples_validate(name):
    config = load_serve_config(EXAMPLES / name)
    assert config.pipeline is not None and config.pipeline["stages"]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("upstream: {type: openai, base_url: 'ftp://x', model: m}\n", "'upstream.base_url'"),
        ("upstream: {type: openai, base_url: 'http://x/v1'}\n", "model"),
        ("tenants: [{id: a}]\n", "tenants[0]"),
        ("sessions: {mode: sometimes}\n", "sessions.mode"),
        ("upstream: {type: local, quantize: int4}\n", "'upstream.quantize'"),
        ("limits: {max_body_bytes: 0}\n", "limits.max_body_bytes"),
        ("pipeline: {stages: [{type: nope}]}\n", "'pipeline.stages[0].type'"),
        ("pipeline: {nmae: x}\n", "'pipeline.nmae'"),
        ("mcp: {tool_output_tokens: {bogus_tool: 5}}\n", "'mcp.tool_output_tokens.bogus_tool'"),
        ("mcp: {max_sessions: 0}\n", "mcp.max_sessions"),
        ("mcp: {max_sessions_per_tenant: -1}\n", "mcp.max_sessions_per_tenant"),
        ("mcp: {session_idle_s: .inf}\n", "mcp.session_idle_s"),
        ("tenants: [{id: a, key_env: CTXPROTO_TEST_UNSET_KEY}]\n", "tenants[0].key_env"),
        ("tenants: [{id: a, key_file: missing.key}]\n", "tenants[0].key_file"),
    ],
)
def test_bad_config_exits_2_naming_file_and_key(tmp_path, capsys, text, key):
    path = write(tmp_path, text)
    assert main(["serve", path]) == 2
    err = capsys.readouterr().err
    assert path in err.replace("\n", "") and key in err


@pytest.mark.parametrize(
    ("text", "key", "listed"),
    [
        ("upstrem: {type: local}\n", "upstrem", "pipeline, served_model, sessions, tenants"),
        ("sessions: {mod: stateful}\n", "sessions.mod", "one of: idle_ttl_s, mode, store"),
        # A top-level key holding a dot is no key of the section its first part names.
        ('"sessions.mod": stateful\n', "sessions.mod", "pipeline, served_model, sessions"),
        ("upstream: {type: local, modle: x}\n", "upstream.modle", "device, eviction"),
        (
            "upstream: {type: openai, base_url: 'http://x/v1', model: m, bse_url: y}\n",
            "upstream.bse_url",
            "api_key_env, base_url, cache_salt",
        ),
        ("tenants: [{id: a, key: k, admn: true}]\n", "tenants[0].admn", "admin, id, key"),
        ("limits: {max_body: 1}\n", "limits.max_body", "max_body_bytes, read_timeout_s"),
        ("mcp: {tenat: a}\n", "mcp.tenat", "tenant, tool_output_tokens"),
    ],
)
def test_a_misspelled_key_lists_the_keys_its_section_takes(tmp_path, text, key, listed):
    """It said only "key 'upstrem': unknown key", where a pipeline config lists its keys."""
    with pytest.raises(ConfigError) as info:
        load_serve_config(write(tmp_path, text))
    assert info.value.key == key and info.value.detail == "unknown key"
    assert info.value.expected is not None and listed in info.value.expected


@pytest.mark.parametrize(
    ("text", "nearest"),
    [
        ("sesions: {mode: stateful}\n", "sessions"),
        ("mcp: {page_sise: 10}\n", "page_size"),
        ("upstream: {type: local, max_batch_sise: 4}\n", "max_batch_size"),
    ],
)
def test_a_misspelt_key_suggests_the_nearest_of_its_section(tmp_path, text, nearest):
    with pytest.raises(ConfigError) as info:
        load_serve_config(write(tmp_path, text))
    assert info.value.expected is not None
    assert info.value.expected.endswith(f"did you mean '{nearest}'?")


def test_an_upstream_of_an_unknown_or_unsaid_kind_names_its_type_key(tmp_path):
    """pydantic's words for a discriminated union ("Input tag 'OpenAI' found using
    'type' does not match...", "Unable to extract tag using discriminator") named
    the section, not the key to fix."""
    with pytest.raises(ConfigError) as wrong:
        load_serve_config(write(tmp_path, "upstream: {type: OpenAI, base_url: x}\n"))
    assert wrong.value.key == "upstream.type"
    assert wrong.value.detail == "unknown kind 'OpenAI'"
    assert wrong.value.expected == "one of 'local', 'openai'"
    for text in ("upstream: {model: x}\n", "upstream: {type: null, model: x}\n"):
        with pytest.raises(ConfigError) as unsaid:
            load_serve_config(write(tmp_path, text))
        assert unsaid.value.key == "upstream.type"
        assert unsaid.value.detail.startswith("required key is missing")


def test_an_mcp_cache_that_is_a_file_is_refused_when_the_config_loads(tmp_path):
    path = write(tmp_path, "")
    Path(path).write_text(f"mcp: {{cache: '{path}'}}\n")
    with pytest.raises(ConfigError, match="is a file, not a folder") as info:
        load_serve_config(path)
    assert info.value.key == "mcp.cache"
    assert ", got" not in str(info.value)  # the message names the path once


@pytest.mark.parametrize("mode", QUANTIZE_MODES)
def test_local_upstream_and_the_session_take_every_engine_quantize_mode(tmp_path, mode):
    config = load_serve_config(write(tmp_path, f"upstream: {{type: local, quantize: {mode}}}\n"))
    assert isinstance(config.upstream, LocalUpstreamConfig)
    assert config.upstream.quantize == mode
    assert BackendConfig(quantize=mode).quantize == mode


def test_local_upstream_speculates_unless_switched_off(tmp_path):
    default = load_serve_config(write(tmp_path, "upstream: {type: local}\n"))
    off = load_serve_config(write(tmp_path, "upstream: {type: local, speculate: false}\n"))
    assert isinstance(default.upstream, LocalUpstreamConfig)
    assert isinstance(off.upstream, LocalUpstreamConfig)
    assert default.upstream.speculate and not off.upstream.speculate


def test_local_upstream_eviction_is_checked(tmp_path):
    default = load_serve_config(write(tmp_path, "upstream: {type: local}\n"))
    lru = load_serve_config(write(tmp_path, "upstream: {type: local, eviction: lru}\n"))
    assert isinstance(default.upstream, LocalUpstreamConfig)
    assert isinstance(lru.upstream, LocalUpstreamConfig)
    assert (default.upstream.eviction, lru.upstream.eviction) == ("reuse", "lru")
    with pytest.raises(ConfigError) as raised:
        load_serve_config(write(tmp_path, "upstream: {type: local, eviction: mru}\n"))
    assert raised.value.key is not None and "eviction" in raised.value.key


def test_keys_never_appear_in_errors(tmp_path):
    path = write(tmp_path, "tenants: [{id: a, key: s3cret-key}, {id: b, key: s3cret-key}]\n")
    config = load_serve_config(path)
    with pytest.raises(ConfigError) as raised:
        config.tenant_keys(path)
    assert "s3cret" not in str(raised.value) and "s3cret" not in repr(config)


def test_key_file_and_env(tmp_path, monkeypatch):
    (tmp_path / "b.key").write_text("key-from-file\n")
    monkeypatch.setenv("CTXPROTO_TEST_KEY", "key-from-env")
    path = write(
        tmp_path, "tenants: [{id: a, key_env: CTXPROTO_TEST_KEY}, {id: b, key_file: b.key}]\n"
    )
    keys = load_serve_config(path).tenant_keys(path)
    assert {k: t.id for k, t in keys.items()} == {"key-from-env": "a", "key-from-file": "b"}


def test_a_key_file_that_is_not_text_names_the_key(tmp_path):
    """A key file that is not UTF-8 ended ``tenant_keys`` in a bare ``UnicodeDecodeError``."""
    (tmp_path / "b.key").write_bytes(b"\xffkey")
    path = write(tmp_path, "tenants: [{id: b, key_file: b.key}]\n")
    with pytest.raises(ConfigError) as raised:
        load_serve_config(path).tenant_keys(path)
    assert raised.value.key == "tenants[0].key_file" and "not UTF-8" in str(raised.value)
    assert "0xff" not in str(raised.value)  # no byte of a key is quoted


def test_a_key_file_that_never_ends_is_refused(tmp_path):
    """``key_file: /dev/zero`` read for ever, where a system prompt file is capped."""
    path = write(tmp_path, "tenants: [{id: b, key_file: /dev/zero}]\n")
    with pytest.raises(ConfigError) as raised:
        load_serve_config(path).tenant_keys(path)
    assert raised.value.key == "tenants[0].key_file" and "64 KiB" in str(raised.value)


def test_no_tenants_means_loopback_only(tmp_path, capsys):
    path = write(
        tmp_path, "upstream: {type: openai, base_url: 'http://127.0.0.1:9/v1', model: m}\n"
    )
    assert main(["serve", path, "--host", "0.0.0.0"]) == 2
    assert "--allow-unauthenticated" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path, capsys):
    import socket

    upstream = "upstream: {type: openai, base_url: 'http://127.0.0.1:9/v1', model: m}\n"
    path = write(tmp_path, upstream)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", path, "--port", str(port)]) == 1
    assert f"the proxy could not start on 127.0.0.1:{port}" in capsys.readouterr().err


def test_cli_serves_a_config(tmp_path, scripted: Any):
    port = _free_port()
    path = write(
        tmp_path,
        f"upstream: {{type: openai, base_url: '{scripted.url}', model: scripted}}\n"
        "tenants: [{id: a, key_env: CTXPROTO_TEST_KEY}]\n"
        "pipeline: {stages: [{type: recency_window, init_parameters: {max_turns: 4}}]}\n",
    )
    env = {**os.environ, "CTXPROTO_TEST_KEY": "k-1", "PYTHONPATH": str(Path(__file__).parents[2])}
    process = subprocess.Popen(
        [sys.executable, "-m", "ctxproto.cli", "serve", path, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        body = {"model": "ctxproto", "messages": [{"role": "user", "content": "via cli"}]}
        answer = httpx.post(
            f"{url}/v1/chat/completions", json=body, headers={"authorization": "Bearer k-1"}
        )
        assert answer.json()["choices"][0]["message"]["content"] == "via cli | via cli"
        denied = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert denied.status_code == 401
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert b"k-1" not in err  # keys are never logged
    # Before the models load (a minute on a first start), one line says what the wait is.
    assert err.index(f"loading {path} and its models".encode()) < err.index(b"Started server")


def test_a_pipeline_file_served_says_where_its_pipeline_goes():
    """`ctxproto serve minimal.yaml` said only "key 'name': unknown key"."""
    from ctxproto.pipeline import SERVE_KEYS
    from ctxproto.serve.config import ServeConfig

    assert set(SERVE_KEYS) == set(ServeConfig.model_fields)
    minimal = EXAMPLES.parent / "pipelines" / "minimal.yaml"
    with pytest.raises(ConfigError) as info:
        load_serve_config(minimal)
    assert info.value.key == "name" and info.value.file == str(minimal)
    assert "under 'pipeline:'" in str(info.value)


def test_a_serve_file_run_as_a_pipeline_says_how_to_start_it():
    from ctxproto import Pipeline

    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(EXAMPLES / "proxy.yaml")
    assert info.value.key == "pipeline" and "ctxproto serve" in str(info.value)


@pytest.mark.parametrize("tenant", [".", "..", ".hidden", "acme."])
def test_a_tenant_id_that_names_no_folder_of_its_own_is_refused(tmp_path, tenant):
    """With `knowledge: stores/{tenant}/kb`, tenant `..` read the folder above every tenant's."""
    path = write(
        tmp_path,
        f"tenants: [{{id: a, key: k1}}, {{id: '{tenant}', key: k2}}]\n"
        "mcp: {knowledge: 'stores/{tenant}/kb'}\n",
    )
    with pytest.raises(ConfigError, match="not a tenant id") as info:
        load_serve_config(path)
    assert info.value.key == "tenants[1].id" and info.value.file == path


def test_the_stdio_tenant_is_checked_as_the_tenants_are(tmp_path):
    path = write(tmp_path, "mcp: {tenant: '..', knowledge: 'stores/{tenant}/kb'}\n")
    with pytest.raises(ConfigError, match="not a tenant id") as info:
        load_serve_config(path)
    assert info.value.key == "mcp.tenant"


def test_a_tenant_reaches_its_own_knowledge_folder_only():
    from ctxproto.serve.config import McpConfig

    config = McpConfig(knowledge="stores/{tenant}/kb")
    assert config.knowledge_location("acme.eu") == "stores/acme.eu/kb"
    with pytest.raises(ConfigError, match="not a tenant id") as info:
        config.knowledge_location("..")  # a tenant given by code, not by a config file
    assert info.value.key == "tenant"


def test_tenant_ids_one_case_apart_never_share_a_knowledge_folder(tmp_path):
    """On macOS and Windows `stores/Acme/kb` is `stores/acme/kb`."""
    text = "tenants: [{id: acme, key: k1}, {id: Acme, key: k2}]\n"
    with pytest.raises(ConfigError, match="only in case") as info:
        load_serve_config(write(tmp_path, text + "mcp: {knowledge: 'stores/{tenant}/kb'}\n"))
    assert info.value.key == "tenants[1].id"
    # With one store for every tenant, the ids may differ in case alone.
    load_serve_config(write(tmp_path, text + "mcp: {knowledge: 'stores/kb'}\n"))


def test_a_tenant_id_no_postgresql_table_can_be_named_by_is_refused(tmp_path):
    """`?table=kb_{tenant}` with tenant `Acme-Corp` failed each search, not the start."""
    knowledge = "postgresql://kb:s3cret@db/ctx?table=kb_{tenant}"
    path = write(
        tmp_path,
        "tenants: [{id: acme_eu, key: k1}, {id: Acme-Corp, key: k2}]\n"
        f"mcp: {{knowledge: '{knowledge}'}}\n",
    )
    with pytest.raises(ConfigError, match="'kb_Acme-Corp'") as info:
        load_serve_config(path)
    assert info.value.key == "tenants[1].id" and "s3cret" not in str(info.value)
    assert "lowercase letters, digits and _" in str(info.value)


def test_a_tenant_table_named_as_another_tenants_index_is_refused(tmp_path):
    """Tables and indexes share one name space: tenant `a`'s index `kb_a_doc_id` was
    tenant `a_doc_id`'s table, so whichever indexed second could not build a store."""
    knowledge = "postgresql://kb:s3cret@db/ctx?table=kb_{tenant}"
    path = write(
        tmp_path,
        "tenants: [{id: a, key: k1}, {id: a_doc_id, key: k2}]\n"
        f"mcp: {{knowledge: '{knowledge}'}}\n",
    )
    with pytest.raises(ConfigError, match="'kb_a_doc_id'") as info:
        load_serve_config(path)
    assert info.value.key == "tenants[1].id" and "s3cret" not in str(info.value)


def test_a_knowledge_table_no_tenant_can_fill_in_is_refused(tmp_path):
    path = write(tmp_path, "mcp: {knowledge: 'postgresql://kb:s3cret@db/ctx?table=KB_{tenant}'}\n")
    with pytest.raises(ConfigError, match="invalid table name") as info:
        load_serve_config(path)
    assert info.value.key == "mcp.knowledge" and "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("sessions: {store: 'redis://:Zq9/Xw7@cache:6379/0'}\n", "sessions.store"),
        ("mcp: {cache: 'redis://:Zq9#Xw7@cache:6379/0#answers'}\n", "mcp.cache"),
        ("mcp: {knowledge: 'postgresql://kb:Zq9/Xw7@db/ctx?table=kb_{tenant}'}\n", "mcp.knowledge"),
    ],
)
def test_a_store_url_with_an_unencoded_password_is_refused_without_showing_it(tmp_path, text, key):
    with pytest.raises(ConfigError, match="percent-encoded") as info:
        load_serve_config(write(tmp_path, text))
    assert info.value.key == key
    assert "Zq9" not in str(info.value) and "Xw7" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("limits: {max_body_bytes: true}\n", "limits.max_body_bytes", "not a boolean"),
        ("upstream: {type: local, max_batch_size: yes}\n", "upstream.max_batch_size", "boolean"),
        (
            "tenants: [{id: a, key: k, max_concurrent_requests: on}]\n",
            "tenants[0].max_concurrent_requests",
            "boolean",
        ),
        ("mcp: {tool_output_tokens: {recall: true}}\n", "mcp.tool_output_tokens.recall", "boolean"),
        ("limits: {read_timeout_s: .inf}\n", "limits.read_timeout_s", "finite number"),
        (
            "upstream: {type: openai, base_url: 'http://x/v1', model: m, timeout: .inf}\n",
            "upstream.timeout",
            "finite number",
        ),
    ],
)
def test_a_boolean_or_infinite_number_is_refused_naming_the_key(tmp_path, text, key, problem):
    """Read as 1, ``max_body_bytes: true`` answered every request 413; an infinite
    ``read_timeout_s`` is no limit on a stalled body."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=problem) as info:
        load_serve_config(path)
    assert info.value.key == key and info.value.file == path

"""Config files: hostile YAML is refused quickly with a ConfigError naming the file."""

import time
from pathlib import Path

import pytest

from ctxproto import ConfigError, Pipeline
from ctxproto.config import load_yaml_mapping
from ctxproto.limits import MAX_CONFIG_BYTES, MAX_YAML_DEPTH


def _alias_bomb(levels: int) -> str:
    """Each level lists the one before nine times: 9**levels strings from a few lines.

    Every level sits under ``name:``, a key whose type is checked, so that
    without the fix the whole expansion reached validation and its message.
    """
    lines = ["name:", '  - &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels):
        previous = ",".join([f"*l{level - 1}"] * 9)
        lines.append(f"  - &l{level} [{previous}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    config = tmp_path / "bomb.yaml"
    # Six levels (9**6 strings) is enough to show the difference and still finish
    # before the fix, which validated the expansion and quoted all of it.
    config.write_text(_alias_bomb(6))
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(config)
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert str(config) in message
    assert "aliases" in message and "line 3" in message
    assert len(message) < 300


def test_the_full_billion_laughs_is_refused_at_once(tmp_path: Path) -> None:
    config = tmp_path / "bomb.yaml"
    config.write_text(_alias_bomb(9))
    assert len(config.read_bytes()) < 500
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases"):
        load_yaml_mapping(config)
    assert time.perf_counter() - start < 2.0


def test_anchors_without_aliases_still_load(tmp_path: Path) -> None:
    config = tmp_path / "anchored.yaml"
    config.write_text("name: &n anchored\nrender: text\n")
    assert Pipeline.from_yaml(config).name == "anchored"


def test_deep_nesting_is_a_config_error_not_a_recursion_error(tmp_path: Path) -> None:
    config = tmp_path / "deep.yaml"
    config.write_text("name: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError, match=f"nested more than {MAX_YAML_DEPTH}") as info:
        load_yaml_mapping(config)
    assert str(config) in str(info.value)


def test_nesting_up_to_the_limit_loads(tmp_path: Path) -> None:
    config = tmp_path / "nested.yaml"
    depth = MAX_YAML_DEPTH - 1  # the top-level mapping is the first level
    config.write_text("a: " + "[" * depth + "]" * depth + "\n")
    assert "a" in load_yaml_mapping(config)


def test_invalid_utf8_names_the_file_and_the_byte(tmp_path: Path) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_yaml_mapping(config)
    assert str(config) in str(info.value)
    assert "not UTF-8" in str(info.value) and "0xe9" in str(info.value)


def test_an_oversized_config_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "huge.yaml"
    config.write_text("name: big\n" + "#" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match="larger than the 1 MiB limit"):
        load_yaml_mapping(config)


def test_a_long_bad_value_is_quoted_as_a_short_excerpt(tmp_path: Path) -> None:
    config = tmp_path / "long.yaml"
    config.write_text("render: " + "x" * 200_000 + "\n")
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(config)
    message = str(info.value)
    assert "key 'render'" in message
    assert "(200000 chars)" in message
    assert len(message) < 300


def test_a_yaml_syntax_error_is_one_line_with_its_position(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("name: [a\nb: {\n")
    with pytest.raises(ConfigError) as info:
        load_yaml_mapping(config)
    assert "\n" not in str(info.value)
    assert "line 2" in str(info.value)


def test_a_key_written_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "twice.yaml"
    config.write_text(
        "name: a\nbudget: {max_prompt_tokens: 100}\nbudget: {reserve_answer_tokens: 9}\n"
    )
    with pytest.raises(ConfigError, match=r"line 3.*'budget' is written twice"):
        load_yaml_mapping(config)


def test_an_empty_config_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "empty.yaml"
    config.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="the config is empty"):
        load_yaml_mapping(config)


def test_a_bad_value_is_quoted_once(tmp_path: Path) -> None:
    config = tmp_path / "twice.yaml"
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    config.write_text(
        f"stages:\n  - type: semantic_cache\n    init_parameters:\n      path: {blocked}/answers\n"
    )
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(config)
    assert str(info.value).count(f"{blocked}/answers") == 1
    with pytest.raises(ConfigError, match=r"got 'many'"):
        Pipeline.from_dict(
            {"stages": [{"type": "recency_window", "init_parameters": {"max_turns": "many"}}]}
        )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("budget:\n  max_prompt_tokens: true\n", "budget.max_prompt_tokens"),
        (
            "budget:\n  max_prompt_tokens: 99\n  section_caps: {history: yes}\n",
            "budget.section_caps.history",
        ),
        (
            "stages:\n  - type: recency_window\n    init_parameters: {max_tokens: true}\n",
            "stages[0].init_parameters.max_tokens",
        ),
        (
            "stages:\n  - type: relevance_filter\n"
            "    init_parameters: {rate: 0.5, fact_boost: on}\n",
            "stages[0].init_parameters.fact_boost",
        ),
    ],
    ids=["budget", "section-cap", "stage-int", "stage-float"],
)
def test_a_boolean_where_a_number_belongs_is_refused_naming_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    """pydantic's lax mode read ``true`` as 1: a one-token budget, a one-token window."""
    config = tmp_path / "pipeline.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match="not a boolean") as info:
        Pipeline.from_yaml(config)
    assert info.value.file == str(config)
    assert info.value.key == key


def test_booleans_still_set_flags_and_quoted_numbers_still_read(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "stages:\n  - type: recency_window\n"
        "    init_parameters: {max_tokens: '500', start_on_user: false}\n"
    )
    stage = Pipeline.from_yaml(config).stages[0]
    assert stage.model_dump() == {"max_tokens": 500, "max_turns": None, "start_on_user": False}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "stages:\n  - type: relevance_filter\n"
            "    init_parameters: {rate: 0.5, recency_boost: .inf}\n",
            "stages[0].init_parameters.recency_boost",
        ),
        (
            "stages:\n  - type: semantic_cache\n"
            "    init_parameters: {path: {tmp}/answers, ttl: .inf}\n",
            "stages[0].init_parameters.ttl",
        ),
    ],
    ids=["boost", "ttl"],
)
def test_an_infinite_number_is_refused_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    """``.inf`` passes a ``ge=0`` or ``gt=0`` check; no setting means it (``ttl`` has null)."""
    config = tmp_path / "pipeline.yaml"
    config.write_text(text.replace("{tmp}", str(tmp_path)))
    with pytest.raises(ConfigError, match="finite number") as info:
        Pipeline.from_yaml(config)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("text", "key", "nearest"),
    [
        ("nmae: x\n", "nmae", "name"),
        ("budget: {max_prompt_token: 5}\n", "budget.max_prompt_token", "max_prompt_tokens"),
        (
            "stages:\n  - type: recency_window\n    init_parameters: {max_token: 5}\n",
            "stages[0].init_parameters.max_token",
            "max_tokens",
        ),
        ("stages:\n  - type: recency_windw\n", "stages[0].type", "recency_window"),
    ],
    ids=["top", "budget", "stage-parameter", "stage"],
)
def test_a_misspelt_key_or_stage_suggests_the_nearest(
    tmp_path: Path, text: str, key: str, nearest: str
) -> None:
    """The full list was given, and a typo one letter from a key was easy to miss in it."""
    config = tmp_path / "pipeline.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(config)
    assert info.value.key == key
    assert f"did you mean '{nearest}'?" in str(info.value)


def test_an_unknown_key_like_none_suggests_nothing(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.yaml"
    config.write_text("colour: blue\n")
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(config)
    assert "did you mean" not in str(info.value)

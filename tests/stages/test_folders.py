"""Folder parameters of stages: a file or an unwritable place is refused when configured."""

from pathlib import Path

import pytest

from ctxproto import ConfigError, Pipeline
from ctxproto.stages.folders import check_writable_folder


@pytest.mark.parametrize(
    ("stage", "key"), [("summarizer", "state_path"), ("semantic_cache", "path")]
)
def test_a_file_as_a_state_folder_is_a_config_error_naming_the_key(
    tmp_path: Path, stage: str, key: str
) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    for bad in (taken, taken / "below"):
        with pytest.raises(ConfigError) as info:
            Pipeline.from_dict(
                {"stages": [{"type": stage, "init_parameters": {key: str(bad)}}]},
                source="bot.yaml",
            )
        message = str(info.value)
        assert message.startswith("bot.yaml")
        assert f"stages[0].init_parameters.{key}" in message
        assert "is a file" in message


def test_a_missing_folder_under_a_writable_one_is_accepted(tmp_path: Path) -> None:
    wanted = tmp_path / "state" / "summaries"
    assert check_writable_folder(str(wanted)) == str(wanted)
    assert not wanted.exists()  # nothing is created by the check


UNWRITABLE_CHECK = """
import sys
from ctxproto import ConfigError, Pipeline
for stage, key in (("summarizer", "state_path"), ("semantic_cache", "path")):
    try:
        Pipeline.from_dict(
            {"stages": [{"type": stage, "init_parameters": {key: sys.argv[1]}}]},
            source="bot.yaml",
        )
    except ConfigError as exc:
        print("refused", exc)
"""


def test_an_unwritable_folder_is_refused_naming_the_key(unprivileged) -> None:
    locked = unprivileged.folder / "locked"
    locked.mkdir()
    unprivileged.make_read_only(locked)
    result = unprivileged.run(UNWRITABLE_CHECK, str(locked / "cache"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line, key in zip(lines, ("state_path", "path"), strict=True):
        assert line.startswith("refused bot.yaml")
        assert f"init_parameters.{key}" in line and "not writable" in line

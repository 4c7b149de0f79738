"""Folder parameters of stages: a file or an unwritable place is refused when configured."""

import os
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


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_an_unwritable_folder_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="not writable"):
            check_writable_folder(str(locked / "cache"))
    finally:
        locked.chmod(0o700)

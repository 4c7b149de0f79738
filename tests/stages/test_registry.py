import textwrap

import pytest

from ctxproto import ConfigError, Pipeline
from ctxproto.stages import registry


def test_third_party_stage_registers_through_entry_point(tmp_path, monkeypatch):
    (tmp_path / "acme_stages.py").write_text(
        textwrap.dedent(
            """
            from ctxproto.stages import Stage, Transformed

            class Shouter(Stage):
                suffix: str = "!"

                def transform(self, context, counter):
                    query = context.query.model_copy(
                        update={"content": context.query.content.upper() + self.suffix}
                    )
                    return Transformed(context.model_copy(update={"query": query}))
            """
        )
    )
    dist = tmp_path / "acme_stages-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-stages\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[ctxproto.stages]\nshout = acme_stages:Shouter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))

    pipeline = Pipeline.from_dict(
        {"stages": [{"type": "shout", "init_parameters": {"suffix": "?!"}}]}
    )
    result = pipeline.run_messages([{"role": "user", "content": "hello"}])
    assert result.prompt is not None
    assert result.prompt.messages[-1]["content"] == "HELLO?!"
    assert "shout" in registry.available_stages()


def test_unknown_stage_lists_known_ones():
    with pytest.raises(ConfigError) as info:
        registry.get_stage_class("no_such_stage")
    assert "recency_window" in str(info.value)


def test_a_second_class_under_a_taken_name_is_a_config_error():
    class Clash(registry.get_stage_class("recency_window")):  # type: ignore[misc]
        pass

    with pytest.raises(ConfigError) as info:
        registry.register_stage("recency_window")(Clash)
    assert info.value.key == "recency_window"
    assert registry.get_stage_class("recency_window") is not Clash

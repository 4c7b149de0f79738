import pytest

from ctxproto import Budget


def test_prompt_limit_respects_context_window():
    assert Budget(max_prompt_tokens=1000).prompt_limit == 1000
    budget = Budget(max_prompt_tokens=1000, context_window=900, reserve_answer_tokens=200)
    assert budget.prompt_limit == 700


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_prompt_tokens": 0},
        {"max_prompt_tokens": 10, "section_caps": {"query": 5}},
        {"max_prompt_tokens": 10, "section_caps": {"history": -1}},
        {"max_prompt_tokens": 10, "context_window": 100, "reserve_answer_tokens": 100},
        {"max_prompt_tokens": 10, "max_tokens": 5},
    ],
)
def test_invalid_budgets_are_rejected(kwargs):
    with pytest.raises(ValueError):
        Budget(**kwargs)


def test_a_reserve_above_the_prompt_cap_is_a_config_error_naming_the_key(tmp_path):
    from ctxproto import ConfigError, Pipeline

    config = tmp_path / "swapped.yaml"
    config.write_text("budget:\n  max_prompt_tokens: 256\n  reserve_answer_tokens: 1500\n")
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(config)
    message = str(info.value)
    assert str(config) in message
    assert "budget.reserve_answer_tokens" in message and "max_prompt_tokens (256)" in message
    assert Budget(max_prompt_tokens=256, reserve_answer_tokens=256).prompt_limit == 256

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


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_prompt_tokens": 0}, "max_prompt_tokens"),
        ({"max_prompt_tokens": 10, "section_caps": {"query": 5}}, "section_caps"),
        ({"max_prompt_tokens": 10, "context_window": 1}, "context_window"),
        ({"max_prompt_tokens": 10, "max_tokens": 5}, "max_tokens"),
    ],
)
def test_a_budget_built_in_python_is_a_config_error_naming_the_key(kwargs, key):
    """Built in Python, a bad budget raised pydantic's ``ValidationError``, outside the
    exception tree that a stage's bad parameter already reached."""
    from ctxproto import ConfigError

    with pytest.raises(ConfigError) as info:
        Budget(**kwargs)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("budget", "says"),
    [
        ("max_prompt_tokens: 256\n  reserve_answer_tokens: 128\n", "without context_window"),
        (
            "max_prompt_tokens: 256\n  context_window: 1024\n  reserve_answer_tokens: 1500\n",
            "smaller than context_window (1024)",
        ),
    ],
)
def test_a_reserve_with_no_window_to_come_out_of_is_a_config_error_naming_the_key(
    tmp_path, budget, says
):
    from ctxproto import ConfigError, Pipeline

    config = tmp_path / "budget.yaml"
    config.write_text("budget:\n  " + budget)
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(config)
    message = str(info.value)
    assert str(config) in message
    assert info.value.key == "budget.reserve_answer_tokens" and says in message


def test_the_reserve_and_the_prompt_share_the_window_not_the_prompt_cap():
    # a short prompt and a long answer
    budget = Budget(max_prompt_tokens=1000, context_window=128_000, reserve_answer_tokens=2000)
    assert budget.prompt_limit == 1000
    # an engine refuses a prompt that fills its window: one token is always left
    assert Budget(max_prompt_tokens=4096, context_window=4096).prompt_limit == 4095


@pytest.mark.parametrize(
    ("budget", "key", "says"),
    [
        (
            "max_prompt_tokens: 256\n  context_window: 1\n",
            "budget.context_window",
            "greater than or equal to 2",
        ),
        (
            "max_prompt_tokens: 256\n  section_caps: {docs: 100}\n",
            "budget.section_caps",
            "unknown section 'docs'; expected one of memory, documents, history",
        ),
        (
            "max_prompt_tokens: 256\n  section_caps: {history: -5}\n",
            "budget.section_caps",
            "the cap of 'history' must be >= 0, got -5",
        ),
    ],
)
def test_a_budget_no_prompt_could_meet_or_a_bad_section_cap_names_its_key(
    tmp_path, budget, key, says
):
    """A one-token window left no token for a prompt: every request was a BudgetError."""
    from ctxproto import ConfigError, Pipeline

    config = tmp_path / "budget.yaml"
    config.write_text("budget:\n  " + budget)
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(config)
    assert info.value.key == key and says in str(info.value)

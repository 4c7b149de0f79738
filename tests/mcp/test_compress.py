"""compress_text through the in-memory client, with the bundled LM and embedder."""

from __future__ import annotations

from typing import Any

from ctxproto.mcp import ContextService
from tests.mcp.conftest import text_of
from tests.mcp.test_server import call

FACTS = ["https://status.example.com/incidents/4821", "ERR-5531", "10.20.30.40:8443", "v2.14.3"]

LOG = " ".join(
    [
        "The service was restarted several times during the long and fairly uneventful night.",
        "Operators looked at dashboards and found nothing unusual for a very long while.",
        f"At 03:12 the gateway began returning {FACTS[1]} for requests to {FACTS[2]}.",
        "People discussed lunch plans and the weather for quite a while in the channel.",
        f"The incident page is {FACTS[0]} and the fix shipped in release {FACTS[3]}.",
        "Afterwards everyone agreed the night had been long, tiring and rather dull.",
    ]
    * 3
)


def test_compress_text_meets_the_target_and_keeps_facts_byte_exact(
    service: ContextService, counter: Any
) -> None:
    result = call(
        service,
        "compress_text",
        {
            "session_id": "z-1",
            "text": LOG,
            "question": "What error did the gateway return and where is the incident page?",
            "target_tokens": 150,
        },
    )
    assert not result.is_error, result.content
    out = result.structured_content
    assert out["original_tokens"] == counter.count(LOG) > 300
    assert out["tokens"] == counter.count(out["text"]) <= 150
    kept = [fact for fact in FACTS if fact in out["text"]]
    assert kept, out["text"]
    for fact in FACTS:  # a fact is either whole or absent, never garbled
        stem = fact[: len(fact) // 2]
        assert (stem in out["text"]) <= (fact in out["text"]), fact


def test_a_text_nothing_of_which_fits_is_a_tool_error_not_an_empty_text(
    service: ContextService,
) -> None:
    # One code block, never cut, over half its tokens: the stage drops it whole.
    code = "```\n" + "total = total + 1\n" * 30 + "```"
    result = call(service, "compress_text", {"session_id": "z-2", "text": code})
    assert result.is_error
    assert "rate" in text_of(result) and "never cut" in text_of(result)
    asked = call(service, "compress_text", {"session_id": "z-2", "text": code, "target_tokens": 50})
    assert asked.is_error and "target_tokens" in text_of(asked) and "50 tokens" in text_of(asked)

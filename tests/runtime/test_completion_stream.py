"""``CompletionStream``: deltas, then the completion; closing early closes the source."""

from collections.abc import Iterator

import pytest

from ctxproto.runtime import Completion, RequestMetrics
from ctxproto.runtime.backends import CompletionStream


def _completion(text: str) -> Completion:
    metrics = RequestMetrics.from_times(
        arrival=0.0,
        first_token=0.1,
        finished=0.2,
        prompt_tokens=5,
        cached_tokens=3,
        output_tokens=2,
    )
    return Completion(text=text, finish_reason="stop", metrics=metrics)


def test_completion_arrives_when_the_deltas_are_exhausted() -> None:
    stream = CompletionStream(iter(["Hel", "lo"]), _completion)
    assert next(stream) == "Hel"
    assert stream.completion is None
    assert list(stream) == ["lo"]
    assert stream.completion is not None
    assert stream.completion.text == "Hello"
    assert stream.completion.metrics.cached_tokens == 3


def test_closing_early_closes_the_source_and_leaves_no_completion() -> None:
    closed: list[bool] = []

    def source() -> Iterator[str]:
        try:
            yield from ["a", "b", "c"]
        finally:
            closed.append(True)

    cancelled: list[bool] = []
    stream = CompletionStream(source(), _completion, lambda: cancelled.append(True))
    assert next(stream) == "a"
    stream.close()
    assert closed == [True] and cancelled == [True]
    assert list(stream) == []  # stays ended: no made-up completion from the partial text
    assert stream.completion is None


def test_close_before_the_first_delta_still_cancels() -> None:
    cancelled: list[bool] = []
    stream = CompletionStream(iter(["a"]), _completion, lambda: cancelled.append(True))
    stream.close()
    assert cancelled == [True]


def test_an_error_ends_the_stream_without_a_completion() -> None:
    def source() -> Iterator[str]:
        yield "a"
        raise RuntimeError("connection lost")

    stream = CompletionStream(source(), _completion)
    assert next(stream) == "a"
    with pytest.raises(RuntimeError):
        next(stream)
    assert list(stream) == []
    assert stream.completion is None

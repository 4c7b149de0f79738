import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxproto import Context, Message
from ctxproto.documents import Document
from ctxproto.pipeline import Pipeline
from ctxproto.stages.relevance_filter import RelevanceFilter, _naming

DOCS = [
    "Bananas are rich in potassium and grow in tropical climates.",
    "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.",
    "Rust's borrow checker prevents data races at compile time.",
    "Paris is the capital of France and sits on the Seine river.",
]


def doc_context(query: str = "Tell me about Paris, France.") -> Context:
    documents = [Document(id=f"d{i}", text=t) for i, t in enumerate(DOCS)]
    return Context(documents=documents, query=Message(role="user", content=query))


def one_document(text: str, query: str) -> Context:
    return Context(
        documents=[Document(id="doc", text=text)], query=Message(role="user", content=query)
    )


def test_keeps_most_relevant_documents_in_original_order(counter):
    budget = counter.count(DOCS[1]) + counter.count(DOCS[3])
    result = RelevanceFilter(max_tokens=budget, targets=["documents"]).run(doc_context(), counter)
    assert [d.id for d in result.context.documents] == ["d1", "d3"]
    assert result.report.counters["kept_pieces"] == 2
    assert result.report.tokens_out < result.report.tokens_in


def test_rate_limits_kept_share(counter):
    result = RelevanceFilter(rate=0.3, targets=["documents"]).run(doc_context(), counter)
    kept = sum(counter.count(d.text) for d in result.context.documents)
    assert 0 < kept <= 0.3 * sum(counter.count(t) for t in DOCS)
    assert result.context.documents[0].id == "d3"


def test_sentence_granularity_keeps_the_needle_sentence(counter):
    haystack = (
        "Startups need founders who care. Most ideas look bad at first. "
        "The access code for the cobalt vault is QX-4821-B. "
        "Investors like growth. Users want something they love."
    )
    context = one_document(haystack, "What is the access code for the cobalt vault?")
    stage = RelevanceFilter(max_tokens=20, granularity="sentence", targets=["documents"])
    result = stage.run(context, counter)
    text = result.context.documents[0].text
    assert "The access code for the cobalt vault is QX-4821-B. " in text
    assert counter.count(text) <= 20


def test_pinned_history_is_untouched_and_outside_the_budget(counter):
    history = [
        Message(role="user", content="Remember: never share my address.", pinned=True),
        Message(role="assistant", content="Understood."),
        Message(role="user", content="What is the boiling point of water at sea level?"),
        Message(role="assistant", content="100 degrees Celsius."),
    ]
    context = Context(history=history, query=Message(role="user", content="And at altitude?"))
    result = RelevanceFilter(max_tokens=0).run(context, counter)
    assert [m.content for m in result.context.history] == ["Remember: never share my address."]
    assert result.context.history[0].pinned


def test_recency_boost_keeps_the_latest_turn(counter):
    history = [Message(role="user", content="Tell me about cats.")] + [
        Message(role="assistant", content=f"Note number {i} about the weather.") for i in range(6)
    ]
    context = Context(history=history, query=Message(role="user", content="What about cats?"))
    one = counter.count(history[-1].content or "")
    plain = RelevanceFilter(max_tokens=one).run(context, counter).context.history
    boosted = RelevanceFilter(max_tokens=one, recency_boost=1.0).run(context, counter)
    assert plain[0].content == "Tell me about cats."
    assert boosted.context.history[0].content == history[-1].content


def test_min_score_drops_unrelated_pieces(counter):
    result = RelevanceFilter(min_score=0.3, targets=["documents"]).run(doc_context(), counter)
    assert "d0" not in {d.id for d in result.context.documents}
    assert "d3" in {d.id for d in result.context.documents}


def test_without_query_nothing_changes(counter):
    context = doc_context().model_copy(update={"query": None})
    result = RelevanceFilter(max_tokens=1).run(context, counter)
    assert result.context == context
    assert result.report.counters["skipped"] == 1


def test_rescoring_embeds_only_new_text(counter):
    stage = RelevanceFilter(max_tokens=40)
    history = [
        Message(role="user", content=f"Turn {i}: we talked about topic {i}.") for i in range(8)
    ]
    context = Context(history=history, query=Message(role="user", content="topic 3?"))
    first = stage.run(context, counter)
    assert first.report.counters["newly_embedded"] == 9
    grown = [*history, Message(role="user", content="Turn 8: something new.")]
    second = stage.run(context.model_copy(update={"history": grown}), counter)
    assert second.report.counters["newly_embedded"] == 1


def test_round_trips_through_config():
    spec = {
        "stages": [
            {
                "type": "relevance_filter",
                "init_parameters": {
                    "rate": 0.25,
                    "granularity": "sentence",
                    "targets": ["documents"],
                },
            }
        ]
    }
    pipeline = Pipeline.from_dict(spec)
    again = Pipeline.from_dict(pipeline.to_dict())
    assert again.stages == pipeline.stages
    assert isinstance(again.stages[0], RelevanceFilter)


texts = st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=120)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    documents=st.lists(texts, max_size=5),
    turns=st.lists(st.tuples(texts, st.booleans()), max_size=5),
    query=texts,
    budget=st.integers(min_value=0, max_value=60),
    granularity=st.sampled_from(["unit", "sentence"]),
)
def test_property_budget_and_pinned(counter, documents, turns, query, budget, granularity):
    context = Context(
        documents=[Document(id=str(i), text=t) for i, t in enumerate(documents)],
        history=[Message(role="user", content=t, pinned=p) for t, p in turns],
        query=Message(role="user", content=query),
    )
    result = RelevanceFilter(max_tokens=budget, granularity=granularity).run(context, counter)
    out = result.context
    pinned = [m.content for m in context.history if m.pinned]
    assert [m.content for m in out.history if m.pinned] == pinned
    if query.strip():
        unpinned = [m.content or "" for m in out.history if not m.pinned]
        unpinned += [d.text for d in out.documents]
        assert sum(counter.count(t) for t in unpinned if t.strip()) <= budget


def test_very_long_and_odd_inputs_do_not_crash(counter):
    long_text = " ".join(f"Sentence {i} is about nothing much." for i in range(400))
    odd = "\x00\x01 \ufffd 字字字 🙂🙂 " * 50
    context = Context(
        documents=[Document(id="long", text=long_text), Document(id="odd", text=odd)],
        history=[Message(role="user", content="   "), Message(role="assistant", content="")],
        query=Message(role="user", content="Which sentence is number 1234?"),
    )
    result = RelevanceFilter(max_tokens=50, granularity="sentence").run(context, counter)
    kept = [d.text for d in result.context.documents]
    assert sum(counter.count(t) for t in kept) <= 50


def test_a_sentence_naming_the_querys_code_outranks_a_likelier_looking_one(counter):
    """MiniLM scores the E7 line above the E4 line for a question about E4; the
    sentence that names the code the user asked about must be the one kept."""
    codes = (
        "- E4: the C-wire is missing or loose; check the wiring or install the adapter kit.\n"
        "- E7: a remote temperature sensor is out of range; move it closer or replace its "
        "battery.\n"
        "- E9: the HVAC system did not respond for 30 minutes; check the breaker."
    )
    context = one_document(codes, "What is error code E4 on the Thermo T3?")
    one_line = counter.count(codes.splitlines()[1]) + 1

    def kept(stage: RelevanceFilter) -> str:
        return stage.run(context, counter).context.documents[0].text

    by_cosine = RelevanceFilter(
        max_tokens=one_line, granularity="sentence", targets=["documents"], fact_boost=0
    )
    assert "E7" in kept(by_cosine)
    default = RelevanceFilter(max_tokens=one_line, granularity="sentence", targets=["documents"])
    assert kept(default).startswith("- E4: the C-wire")


def test_a_fact_every_piece_names_lifts_none_over_min_score(counter):
    context = Context(
        documents=[Document(id=f"d{i}", text=t + " Paris.") for i, t in enumerate(DOCS)],
        query=Message(role="user", content="Which of these is about Paris?"),
    )
    stage = RelevanceFilter(min_score=0.9, targets=["documents"], fact_boost=5)
    assert stage.run(context, counter).context.documents == []
    one_names_it = context.model_copy(
        update={"documents": [Document(id=f"d{i}", text=t) for i, t in enumerate(DOCS)]}
    )
    kept = stage.run(one_names_it, counter).context.documents
    assert [d.id for d in kept] == ["d1", "d3"]  # the two that name Paris


@pytest.mark.parametrize(
    ("fact", "text", "named"),
    [
        ("E4", "- E4: the C-wire is missing", True),
        ("E4", "error E40 on the display", False),
        ("US", "tell us about it", False),
        ("US", "we ship within the US.", True),
        ("Paris", "flights to paris", True),
        ("Hub 2", "the Hub 2.1 firmware", False),
        ("15", "supports 15 A loads", True),
        ("15", "version 1.15", False),
    ],
)
def test_a_fact_is_named_whole(fact, text, named):
    assert bool(_naming(fact).search(text)) is named

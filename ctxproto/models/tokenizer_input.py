"""Text as the models' tokenizers take it.

Kept in the model layer, below the messages that use it, so that the embedder and
the runtime's chat template read text alike.
"""

from __future__ import annotations

import re

__all__ = ["well_formed"]


_SURROGATE = re.compile("[\ud800-\udfff]")


def well_formed(text: str, *, keep_length: bool = False) -> str:
    """``text`` with each lone UTF-16 surrogate replaced by U+FFFD, as tiktoken does.

    JSON may escape half a surrogate pair (``"\\ud83d"``), which Python decodes into
    a ``str`` that has no UTF-8 form; Rust tokenizers then refuse the whole text with
    a ``TypeError``. A pair written as two escapes is joined into its character,
    unless ``keep_length``: then every surrogate is replaced, so that character
    offsets into the result are offsets into ``text`` (the self-information scorer's).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        if keep_length:
            return _SURROGATE.sub("\ufffd", text)
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text

import subprocess
import sys

import pytest

from ctxproto._extras import require
from ctxproto.errors import ModelNotAvailableError


def test_missing_extra_names_what_to_install():
    with pytest.raises(ModelNotAvailableError, match=r"pip install 'ctxproto\[embed\]'"):
        require("a_module_that_is_not_installed", extra="embed")


def test_importing_ctxproto_stays_light():
    code = (
        "import sys, ctxproto, ctxproto.runtime, ctxproto.stores;"
        "heavy = {'torch', 'transformers', 'sentence_transformers', 'faiss'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

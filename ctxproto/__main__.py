"""``python -m ctxproto``: the ``ctxproto`` command."""

import sys

from ctxproto.cli.main import main

sys.exit(main())

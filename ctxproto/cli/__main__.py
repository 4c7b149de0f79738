import sys

from ctxproto.cli.main import main

sys.exit(main())

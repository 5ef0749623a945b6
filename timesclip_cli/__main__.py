"""``python -m timesclip_cli``: the ``timesclip-darts`` command."""

import sys

from timesclip_cli.main import main

sys.exit(main())

"""``python -m clients.tvixctl``: the same as the ``tvixctl`` command."""

from __future__ import annotations

import sys

from clients.tvixctl import main

sys.exit(main())

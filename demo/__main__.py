"""``python -m demo [--sip]`` (what ``make demo`` / ``make demo DEMO=sip`` run)."""

from __future__ import annotations

import sys

from demo.run import main

sys.exit(main())

"""``python -m rehost.agent``."""

import sys

from rehost.agent.main import main

sys.exit(main())

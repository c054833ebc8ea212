"""`python -m audit …`: the auditor's commands on a machine without the gateway."""

import sys

from audit.cli import main

sys.exit(main())

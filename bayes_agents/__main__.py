"""``python -m bayes_agents`` is the ``bayes-rl`` command line (see :mod:`bayes_agents.cli`)."""

import sys

from bayes_agents.cli import main

sys.exit(main())

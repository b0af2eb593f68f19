"""``python -m course_tools <command>``: see :mod:`course_tools.cli`."""

import sys

from course_tools.cli import main

sys.exit(main())

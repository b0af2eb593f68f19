"""Keep lesson notebooks reviewable: ``course_tools.nbclean`` (see its docstring).

    python tools/nbclean.py notebooks/*.ipynb            # strip in place
    python tools/nbclean.py --check notebooks/*.ipynb    # exit 1 if a file is not clean
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from course_tools.nbclean import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

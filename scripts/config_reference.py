"""Write docs/configuration.md from the config schema (src/diversynth/config/__init__.py).

.venv/bin/python scripts/config_reference.py           # write the page again
.venv/bin/python scripts/config_reference.py --check   # exit 1 if the page is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this checkout's schema, whatever is installed

from diversynth.config.reference import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(page=REPO / "docs" / "configuration.md"))

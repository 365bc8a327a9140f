"""Where the reference-code checkpoints used by the tests are: concat_small and spatin_small, each a
checkpoint.pt with its config.yml and io.pt (shared/fixtures/official beside the repository, or
$MCVD_OFFICIAL_FIXTURES, e.g. on a GPU machine with a copy of them). Tests that need them skip
without them (`needs_fixtures`). Importable from every test folder: tests/ is on sys.path through
its conftest.py."""
import os
from pathlib import Path

import pytest

FIXTURES = Path(os.environ.get("MCVD_OFFICIAL_FIXTURES")
                or Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official")
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"fixtures not found at {FIXTURES}")

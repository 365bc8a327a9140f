import sys

from mcvd.cli import main

sys.exit(main())

import sys

from benchmarks.inflate.cli import main

sys.exit(main())

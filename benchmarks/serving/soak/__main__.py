import sys

from benchmarks.serving.soak.cli import main

sys.exit(main())

import sys

from vllm_dspark.cli import main

sys.exit(main())

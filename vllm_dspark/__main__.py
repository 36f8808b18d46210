import sys

from vllm_dspark.cli import main

if __name__ == "__main__":  # multiprocessing's spawn re-imports this module in vLLM's workers
    sys.exit(main())

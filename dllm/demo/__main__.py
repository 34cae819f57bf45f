"""``python -m dllm.demo [flags]``: the offline demo (same as ``dllm demo`` and ``make demo``)."""

import sys

from dllm.demo.run import main

main(sys.argv[1:])

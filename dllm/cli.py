"""The ``dllm`` command line: ``dllm sft <family> [flags]``, ``dllm demo [flags]``.

Each verb hands its flags to the same ``main()`` the scripts use, so ``dllm sft llama3 --help`` and
``python examples/llama3/sft.py --help`` print the same options.
"""

from __future__ import annotations

import sys

USAGE = """usage: dllm <command> [flags]

commands:
  sft <family> [flags]   masked-diffusion SFT; family: {families} (same flags as examples/<family>/sft.py)
  demo [flags]           offline demo: train a tiny model on synthetic tasks, then answer held-out prompts
  version                print the dllm version

`dllm <command> --help` lists a command's flags.
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from dllm.utils.sft import FAMILIES

    usage = USAGE.format(families=", ".join(sorted(FAMILIES)))
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "version":
        from dllm import __version__

        print(__version__)
        return 0
    if command == "sft":
        if not rest or rest[0] not in FAMILIES:
            print(f"dllm sft: give a family first, one of {sorted(FAMILIES)}\n\n{usage}", file=sys.stderr)
            return 2
        from dllm.utils.sft import main as sft_main

        sft_main(rest[0], rest[1:])
        return 0
    if command == "demo":
        from dllm.demo.run import main as demo_main

        demo_main(rest)
        return 0
    print(f"dllm: unknown command {command!r}\n\n{usage}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``dllm`` command line: ``dllm sft [family] [flags]``, ``dllm demo [flags]``, ``dllm demo-vl [flags]``,
``dllm sample CKPT ...``, ``dllm serve CKPT ...``, ``dllm chat CKPT``, ``dllm playground CKPT``,
``dllm merge-lora BASE ADAPTER OUT``.

Each verb hands its flags to the same ``main()`` the scripts use, so ``dllm sft llama3 --help`` and
``python examples/llama3/sft.py --help`` print the same options. A :class:`~dllm.errors.UsageError` (a mistake
in what was asked: a bad flag, a missing file, a malformed dataset row, a checkpoint that cannot be used; dllm's
input errors all subclass it) prints one line and exits with status 2. Any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations

import sys

USAGE = """usage: dllm <command> [flags]

commands:
  sft [family] [flags]   masked-diffusion SFT of any causal LM (--model_name_or_path picks the class from the
                         checkpoint's model_type); a family ({families}) supplies a default checkpoint
                         (same flags as examples/<family>/sft.py)
  demo [flags]           offline demo: train a tiny model on synthetic tasks, then answer held-out prompts
  demo-vl [flags]        offline visual demo: train a tiny Qwen3-VL on rendered colour grids, then answer
                         questions about held-out grids
  sample CKPT [prompts] [flags]
                         answer prompts (arguments, --prompt_file F.txt|F.jsonl) with a checkpoint, in batches;
                         prints them or writes --output out.jsonl; every sampler option is a flag;
                         --image FILE: questions about an image (vision-language checkpoints)
  eval CKPT [flags]      exact match on the demo's held-out tasks (--task demo) or a dataset (--dataset_args SPEC),
                         per task and overall; --likelihood True adds the ELBO NLL per reference token;
                         every sampler option is a flag; --output results.json
  serve CKPT [flags]     OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models);
                         needs the serve extra: pip install 'dllm[serve]'
  chat CKPT [flags]      multi-turn chat in the terminal, each answer unmasking step by step on screen;
                         /reset, /settings steps=4 threshold=0.9, /image FILE, /quit; piped input: answers only
  playground CKPT [--port N] [flags]
                         web page: type a prompt, pick steps / block size / threshold / cache, watch the answer
                         unmask; needs the web extra: pip install 'dllm[web]'
  merge-lora BASE ADAPTER OUT [--overwrite True]
                         merge a LoRA adapter (dllm sft --lora True writes OUT/adapter) into its base model: a
                         standalone checkpoint with its tokenizer and mask token
  grpo CKPT --dataset_args F [flags]
                         post-train with reward functions (GRPO; --loss_type elbo|diffu_grpo, --reward_funcs)
  dpo CKPT --dataset_args F [flags]
                         post-train on preference pairs (prompt, chosen, rejected): DPO with ELBO likelihoods
  demo-rl [flags]        offline demo: a short SFT on the demo tasks, then GRPO / DPO; held-out exact match before and after
  version                print the dllm version

`dllm <command> --help` lists a command's flags.
"""


def _sft(rest: list[str]) -> None:
    from dllm.sft.recipe import main as sft_main

    family = rest[0] if rest and not rest[0].startswith("-") else None
    sft_main(family, rest[1:] if family is not None else rest)


def _demo(rest: list[str]) -> None:
    from dllm.demo.run import main as demo_main

    demo_main(rest)


def _demo_vl(rest: list[str]) -> None:
    from dllm.demo.vl import main as demo_vl_main

    demo_vl_main(rest)


def _sample(rest: list[str]) -> None:
    from dllm.inference.sample import main as sample_main

    sample_main(rest)


def _eval(rest: list[str]) -> None:
    from dllm.eval.exact_match import main as eval_main

    eval_main(rest)


def _chat(rest: list[str]) -> None:
    from dllm.inference.chat import main as chat_main

    chat_main(rest)


def _playground(rest: list[str]) -> None:
    import importlib.util

    from dllm.errors import UsageError

    if importlib.util.find_spec("gradio") is None:
        raise UsageError("needs gradio: pip install 'dllm[web]'")
    from dllm.inference.playground import main as playground_main

    playground_main(rest)


def _serve(rest: list[str]) -> None:
    import importlib.util

    from dllm.errors import UsageError

    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"needs {' and '.join(missing)}: pip install 'dllm[serve]'")
    from dllm.inference.server import main as serve_main

    serve_main(rest)


def _merge_lora(rest: list[str]) -> None:
    from dllm.sft.merge import main as merge_main

    merge_main(rest)


def _grpo(rest: list[str]) -> None:
    from dllm.rl.recipe import grpo_main

    grpo_main(rest)


def _dpo(rest: list[str]) -> None:
    from dllm.rl.recipe import dpo_main

    dpo_main(rest)


def _demo_rl(rest: list[str]) -> None:
    from dllm.demo.rl import main as demo_rl_main

    demo_rl_main(rest)


COMMANDS = {
    "sft": _sft,
    "demo": _demo,
    "demo-vl": _demo_vl,
    "sample": _sample,
    "eval": _eval,
    "serve": _serve,
    "chat": _chat,
    "playground": _playground,
    "merge-lora": _merge_lora,
    "grpo": _grpo,
    "dpo": _dpo,
    "demo-rl": _demo_rl,
}


def main(argv: list[str] | None = None) -> int:
    """Run one ``dllm`` command; returns the process exit status."""
    from dllm.auto import FAMILIES
    from dllm.errors import UsageError

    argv = list(sys.argv[1:] if argv is None else argv)
    usage = USAGE.format(families=", ".join(sorted(FAMILIES)))
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "version":
        from dllm import __version__

        print(__version__)
        return 0
    if command not in COMMANDS:
        print(f"dllm: unknown command {command!r}; choose one of {', '.join([*COMMANDS, 'version'])}",
              file=sys.stderr)
        return 2
    try:
        COMMANDS[command](rest)
    except UsageError as err:
        print(f"dllm {command}: {' '.join(str(err).split())}", file=sys.stderr)  # one line, whatever the message
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

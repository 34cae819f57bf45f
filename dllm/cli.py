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

USAGE = """usage: dllm <command> [flags]   (dllm --version: the version; dllm <command> --help: its flags)

commands:
  sft [family] [flags]   masked-diffusion SFT of any causal LM (--model_name_or_path picks the class from the
                         checkpoint's model_type); a family ({families}) supplies a default checkpoint
                         (same flags as examples/<family>/sft.py)
  pt [family] [flags]    masked-diffusion pretraining on raw text (--dataset_args: .txt, JSONL/Parquet with a
                         text column, folders, hub ids; --streaming True; --packing document|concat); same
                         recipe, options and checkpoints as sft (examples/<family>/pt.py)
  demo [flags]           offline demo: train a tiny model on synthetic tasks, then answer held-out prompts
  demo-vl [flags]        offline visual demo: train a tiny Qwen3-VL on rendered colour grids, then answer
                         questions about held-out grids
  sample CKPT [prompts] [flags]
                         answer prompts (arguments, --prompt_file F.txt|F.jsonl) with a checkpoint, in batches;
                         prints them or writes --output out.jsonl; every sampler option is a flag;
                         --image FILE: questions about an image (vision-language checkpoints)
  eval CKPT [flags]      score the sampler's answers with 95% intervals: --task demo|countdown|sudoku|humaneval or
                         --dataset_args SPEC; --limit N; --sweep "threshold=none,0.9 cache=none,dual" crosses
                         sampler settings into one table; --output results.json (+ .md); --rerun results.json
  lm-eval [lm-eval flags]
                         lm-evaluation-harness's own command line with the dllm model registered
                         (--model_args pretrained=CKPT,threshold=0.9,...); pip install -e '.[eval]'
  serve CKPT [flags]     OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models);
                         needs the serve extra: pip install -e '.[serve]'
  chat CKPT [flags]      multi-turn chat in the terminal, each answer unmasking step by step on screen;
                         /reset, /settings steps=4 threshold=0.9, /image FILE, /quit; piped input: answers only
  playground CKPT [--port N] [flags]
                         web page: type a prompt, pick steps / block size / threshold / cache, watch the answer
                         unmask; needs the web extra: pip install -e '.[web]'
  merge-lora BASE ADAPTER OUT [--overwrite True]
                         merge a LoRA adapter (dllm sft --lora True writes OUT/adapter) into its base model: a
                         standalone checkpoint with its tokenizer and mask token
  grpo CKPT --dataset_args F [flags]
                         post-train with reward functions (GRPO; --loss_type elbo|diffu_grpo, --reward_funcs)
  dpo CKPT --dataset_args F [flags]
                         post-train on preference pairs (prompt, chosen, rejected): DPO with ELBO likelihoods
  demo-rl [flags]        offline demo: a short SFT on the demo tasks, then GRPO / DPO; held-out exact match
                         before and after
  export CKPT OUT --format sdar
                         write a block-diffusion Qwen3 checkpoint in SDAR's layout (SGLang's diffusion path)
  version                print the dllm version

`dllm <command> --help` lists a command's flags.
"""


def _sft(rest: list[str]) -> None:
    from dllm.sft.recipe import run

    family = rest[0] if rest and not rest[0].startswith("-") else None
    run(family, rest[1:] if family is not None else rest)


def _pt(rest: list[str]) -> None:
    from dllm.sft.recipe import run

    family = rest[0] if rest and not rest[0].startswith("-") else None
    run(family, rest[1:] if family is not None else rest, mode="pt")


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


def _lm_eval(rest: list[str]) -> None:
    import importlib.util

    from dllm.errors import UsageError

    if importlib.util.find_spec("lm_eval") is None:
        raise UsageError("needs lm-evaluation-harness: pip install -e '.[eval]'")
    from dllm.eval.lm_eval_adapter import main as lm_eval_main

    lm_eval_main(rest)


def _chat(rest: list[str]) -> None:
    from dllm.inference.chat import main as chat_main

    chat_main(rest)


def _playground(rest: list[str]) -> None:
    from dllm.inference.playground import main as playground_main

    playground_main(rest)


def _serve(rest: list[str]) -> None:
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
def _export(rest: list[str]) -> None:
    from dllm.export.sdar import main as export_main

    export_main(rest)


COMMANDS = {
    "sft": _sft,
    "pt": _pt,
    "demo": _demo,
    "demo-vl": _demo_vl,
    "sample": _sample,
    "eval": _eval,
    "lm-eval": _lm_eval,
    "serve": _serve,
    "chat": _chat,
    "playground": _playground,
    "merge-lora": _merge_lora,
    "grpo": _grpo,
    "dpo": _dpo,
    "demo-rl": _demo_rl,
    "export": _export,
}


# Verbs that need an optional extra: (extra, the modules it brings). Checked by main() before the verb runs, so a
# missing one is one line, and --help still lists the flags (the verbs import these only when serving).
EXTRAS = {"serve": ("serve", ("fastapi", "uvicorn")), "playground": ("web", ("gradio",))}


def missing_extra(command: str) -> str | None:
    """What ``command`` needs and how to install it, when its extra's modules are not installed; else None."""
    import importlib.util

    extra, modules = EXTRAS.get(command, ("", ()))
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"needs {' and '.join(missing)}: pip install -e '.[{extra}]'"


def main(argv: list[str] | None = None) -> int:
    """Run one ``dllm`` command; returns the process exit status (2: a usage mistake, including no command)."""
    from dllm.auto import FAMILIES
    from dllm.errors import UsageError

    argv = list(sys.argv[1:] if argv is None else argv)
    usage = USAGE.format(families=", ".join(sorted(FAMILIES)))
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if not argv:  # asked for nothing: the verbs, on stderr, as argparse does for a missing argument
        print(usage, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command in ("version", "--version"):
        from dllm import __version__

        print(__version__)
        return 0
    if command not in COMMANDS:
        print(f"dllm: unknown command {command!r}; choose one of {', '.join([*COMMANDS, 'version'])}",
              file=sys.stderr)
        return 2
    missing = missing_extra(command)
    try:
        if missing is None:
            COMMANDS[command](rest)
        elif {"-h", "--help"} & set(rest):
            _help_without_extra(command, rest, missing)
        else:
            raise UsageError(missing)
    except UsageError as err:
        print(f"dllm {command}: {' '.join(str(err).split())}", file=sys.stderr)  # one line, whatever the message
        return 2
    return 0


def _help_without_extra(command: str, rest: list[str], missing: str) -> None:
    """``dllm COMMAND --help`` while the verb's extra is missing: the flags, then what running it needs; only the
    latter (a UsageError) when the verb's module cannot even be imported without the extra."""
    from dllm.errors import UsageError

    try:
        COMMANDS[command](rest)
    except ModuleNotFoundError as err:
        if err.name not in EXTRAS[command][1]:
            raise
        raise UsageError(missing) from err
    except SystemExit:  # argparse printed the flags
        print(f"dllm {command} {missing}", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())

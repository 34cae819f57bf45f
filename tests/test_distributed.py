"""Distributed launches: the accelerate configs, the Slurm launcher, and real multi-process runs on CPU.

DDP and DeepSpeed run for real over gloo (``accelerate launch`` + ``--use_cpu True``). FSDP needs GPUs
(accelerate turns an FSDP launch on CPU into plain multi-CPU data parallelism), so ``fsdp.yaml`` is checked
by resolving it through accelerate's own launch validation into the FSDP plugin the trainer would get.

The equivalence tests take one SGD step at t = 1 (``--time_eps 1``: every answer token masked, ELBO weight
1, no randomness left in the loss): 2 processes x batch 2 must give the same weights as 1 process x batch 4,
which holds only if the loss is normalised by the token count of the global batch and scaled back up for
DDP's/DeepSpeed's gradient averaging (``MDLMTrainer._get_num_items_in_batch`` / ``compute_loss``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaForCausalLM

from dllm.configs import ACCELERATE_CONFIG_DIR, accelerate_config_path, available_accelerate_configs
from dllm.pipelines.llama3 import Llama3ForMaskedLM
from dllm.demo.tokenizer import build_char_tokenizer
from tests.helpers import alpaca_fixture, checkpoint_without_mask_token, tiny_llama_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "scripts" / "accelerate_configs"
SLURM = ROOT / "scripts" / "train.slurm.sh"
SCRIPT = "examples/llama3/sft.py"
pytestmark = pytest.mark.slow

# One SGD step with nothing random in the loss (see the module docstring).
ONE_SGD_STEP = ["--max_steps", "1", "--optim", "sgd", "--learning_rate", "1.0", "--lr_scheduler_type", "constant",
                "--warmup_steps", "0", "--weight_decay", "0", "--max_grad_norm", "0", "--time_eps", "1.0",
                "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "True",
                "--max_seq_length", "64", "--seed", "0"]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)
    # One thread per process: the test machine has few cores and several ranks share them.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path,
            "OMP_NUM_THREADS": "1"}


def accelerate_launch(config: str, launch_flags: list[str], script_flags: list[str],
                      timeout: int = 600, script: str = SCRIPT) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file scripts/accelerate_configs/<config>.yaml ... examples/llama3/sft.py``."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{config}.yaml"),
           "--main_process_port", "0", *launch_flags, str(ROOT / script), *script_flags]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


# Two processes on CPU: gloo via torchrun (MULTI_GPU/DEEPSPEED launcher), the script told --use_cpu True;
# --mixed_precision no overrides the configs' bf16 (CPU autocast would blur the comparisons).
TWO_CPU_PROCESSES = ["--num_processes", "2", "--mixed_precision", "no"]


def logged(result: subprocess.CompletedProcess, key: str) -> list[float]:
    """Values of ``key`` in Trainer's printed log dicts (``{'loss': '6.682', ...}``), in order."""
    return [float(v) for v in re.findall(rf"'{key}': '?([-+0-9.eE]+)'?", result.stdout + result.stderr)]


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_step_workspace(tmp_path_factory):
    """A tiny LLaMA checkpoint whose tokenizer already has a mask token (no randomly initialised embedding
    row, so separate runs start from identical weights) and a 4-row Alpaca file (one global batch)."""
    tmp = tmp_path_factory.mktemp("one_step")
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    base = tmp / "base"
    LlamaForCausalLM(tiny_llama_config(vocab_size=len(tokenizer))).save_pretrained(base)
    tokenizer.save_pretrained(base)
    # Answers of very different lengths: however the 4 rows split over 2 ranks, the ranks hold different
    # token counts, so averaging per-rank means would differ from the global per-token mean.
    rows = [{"instruction": f"Say {word}", "input": "", "output": word} for word in
            ["a", "bb", "the quick brown fox", "jumps over the lazy dog, then sleeps for the rest of the day"]]
    data = tmp / "alpaca.json"
    data.write_text(json.dumps(rows))
    return {"tmp": tmp, "base": base, "data": f"{data}[train:4]"}


def one_sgd_step(workspace, name: str, config: str, launch_flags: list[str], batch_size: int,
                 extra: tuple[str, ...] = ()):
    out = workspace["tmp"] / name
    result = accelerate_launch(config, launch_flags, [
        "--model_name_or_path", str(workspace["base"]), "--dataset_args", workspace["data"],
        "--output_dir", str(out), "--per_device_train_batch_size", str(batch_size), *ONE_SGD_STEP, *extra])
    return out, result


@pytest.fixture(scope="module")
def single_process_step(one_step_workspace):
    """The reference: cpu.yaml, one process, batch 4, one SGD step."""
    return one_sgd_step(one_step_workspace, "single", "cpu", [], batch_size=4)


def assert_same_weights(out: Path, reference: Path, base: Path) -> None:
    got, want, start = (load_file(p / "model.safetensors") for p in (out, reference, base))
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=name)
    moved = [(want[n] - start[n]).abs().max().item() for n in start if start[n].shape == want[n].shape]
    # every tensor moved (so equal weights mean equal gradients for each), and the step was not negligible
    assert min(moved) > 0 and max(moved) > 1e-3


# ---- the configs ------------------------------------------------------------------------------------

EXPECTED = {
    "cpu": ("NO", "no", 1), "ddp": ("MULTI_GPU", "bf16", 8), "fsdp": ("FSDP", "bf16", 8),
    "deepspeed": ("DEEPSPEED", "bf16", 8), "deepspeed_zero2": ("DEEPSPEED", "bf16", 8),
    "deepspeed_zero3": ("DEEPSPEED", "bf16", 8),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_in_accelerate(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))  # rejects unknown top-level keys
    assert isinstance(config, ClusterConfig)
    distributed_type, mixed_precision, num_processes = EXPECTED[name]
    assert config.distributed_type.value == distributed_type
    assert config.mixed_precision == mixed_precision
    assert config.num_processes == num_processes
    assert config.use_cpu == (name == "cpu")


def _resolve_launch(argv: list[str]):
    """What ``accelerate launch argv`` resolves to (accelerate's own parsing and validation, nothing run)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    return args


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_seed_single_gpu_override_validates(name):
    """SEED's single-GPU line (``--num_processes 1`` over an 8-process config) passes accelerate's checks."""
    args = _resolve_launch(["--config_file", str(CONFIGS / f"{name}.yaml"), "--num_processes", "1", SCRIPT])
    assert args.num_processes == 1
    assert args.multi_gpu == (name == "ddp") and args.use_fsdp == (name == "fsdp")
    assert args.use_deepspeed == name.startswith("deepspeed")


def test_deepspeed_configs_stages():
    stages = {name: yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["deepspeed_config"]
              for name in ["deepspeed", "deepspeed_zero2", "deepspeed_zero3"]}
    assert stages["deepspeed"]["zero_stage"] == stages["deepspeed_zero2"]["zero_stage"] == 2
    assert stages["deepspeed_zero3"]["zero_stage"] == 3
    assert stages["deepspeed_zero3"]["zero3_save_16bit_model"] is True  # save_model writes full weights
    for config in stages.values():
        assert config["deepspeed_multinode_launcher"] == "standard"
        # Left to TrainingArguments ("auto"): values here would override the script's flags.
        assert "gradient_accumulation_steps" not in config and "gradient_clipping" not in config


def test_fsdp_config_resolves_to_fsdp2_plugin(monkeypatch):
    """fsdp.yaml -> accelerate's launch env -> the FSDP plugin a rank builds: FSDP2, full shard, full state
    dict (so Trainer.save_model writes a from_pretrained checkpoint), decoder layers auto-detected."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from accelerate.utils.launch import prepare_multi_gpu_env
    from peft import LoraConfig, get_peft_model
    from torch.distributed.fsdp import StateDictType

    args = _resolve_launch(["--config_file", str(CONFIGS / "fsdp.yaml"), "--main_process_port", "0", SCRIPT])
    assert args.use_fsdp and args.num_processes == 8 and args.mixed_precision == "bf16"
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert "FSDP_TRANSFORMER_CLS_TO_WRAP" not in env  # left to the model's _no_split_modules
    for key, value in env.items():
        if key.startswith("FSDP_"):
            monkeypatch.setenv(key, value)

    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # FULL_SHARD
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT

    model = Llama3ForMaskedLM(tiny_llama_config())
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for wrapped in (model, lora):  # the Trainer hands FSDP the PeftModel under --lora True
        policy = fsdp2_prepare_auto_wrap_policy(plugin, wrapped)
        units = [type(m).__name__ for m in wrapped.modules() if policy(m)]
        assert units == ["LlamaDecoderLayer"] * 2


def test_packaged_configs_match_scripts():
    scripts = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    packaged = sorted(p.name for p in ACCELERATE_CONFIG_DIR.glob("*.yaml"))
    assert scripts == packaged and {"cpu.yaml", "ddp.yaml", "fsdp.yaml", "deepspeed.yaml"} <= set(scripts)
    for name in scripts:
        assert (CONFIGS / name).read_bytes() == (ACCELERATE_CONFIG_DIR / name).read_bytes(), (
            f"{name}: scripts/accelerate_configs and dllm/configs/accelerate differ; copy the edited one over")
    assert available_accelerate_configs() == [n.removesuffix(".yaml") for n in scripts]
    assert accelerate_config_path("fsdp") == accelerate_config_path("fsdp.yaml") == ACCELERATE_CONFIG_DIR / "fsdp.yaml"
    with pytest.raises(FileNotFoundError, match="available: cpu, ddp, deepspeed"):
        accelerate_config_path("zero9")
    with pytest.raises(FileNotFoundError):
        accelerate_config_path("../accelerate/ddp")


# ---- the Slurm launcher --------------------------------------------------------------------------


def test_slurm_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SLURM)], check=True)


@pytest.fixture
def fake_slurm(tmp_path):
    """``srun`` (runs its command once per task with SLURM_PROCID set), ``scontrol`` (two hosts) and an
    ``accelerate`` that resolves its arguments with accelerate's own launch code and prints the result."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        set -euo pipefail
        ntasks=1
        while [[ "$1" == -* ]]; do
          case "$1" in --ntasks=*) ntasks="${1#*=}" ;; esac
          echo "srun-option $1" >&2
          shift
        done
        for ((rank = 0; rank < ntasks; rank++)); do SLURM_PROCID=$rank SLURM_NODEID=$rank "$@"; done
        """))
    (bin_dir / "scontrol").write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        [[ "$1 $2" == "show hostnames" && "$3" == "gpu-node-[07-08]" ]] || { echo "bad call: $*" >&2; exit 1; }
        printf 'gpu-node-07\\ngpu-node-08\\n'
        """))
    (bin_dir / "accelerate").write_text(f"#!{sys.executable}\n" + textwrap.dedent("""\
        import json, sys
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser
        from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

        assert sys.argv[1] == "launch", sys.argv
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(sys.argv[2:]))
        cmd = None
        if args.use_deepspeed:
            args.deepspeed_fields_from_accelerate_config = ""  # as launch_command sets it
            cmd, env = prepare_deepspeed_cmd_env(args)  # cmd is None with the standard (torchrun) launcher
        else:
            env = prepare_multi_gpu_env(args)
        print("LAUNCH " + json.dumps({
            "argv": sys.argv[2:], "machine_rank": args.machine_rank, "num_machines": args.num_machines,
            "num_processes": args.num_processes, "nnodes": args.nnodes, "node_rank": args.node_rank,
            "nproc_per_node": args.nproc_per_node, "master_addr": args.master_addr,
            "master_port": args.master_port, "rdzv_backend": args.rdzv_backend, "use_fsdp": args.use_fsdp,
            "use_deepspeed": args.use_deepspeed, "fsdp_version": env.get("FSDP_VERSION"), "ds_cmd": cmd,
            "training_script": args.training_script, "training_script_args": args.training_script_args}))
        """))
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu-node-[07-08]", "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "8",
           "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_PROCID": "0"}
    for key in ("MASTER_PORT", "GPUS_PER_NODE", "SLURM_GPUS_PER_NODE", "DLLM_SLURM_DRY_RUN", "ACCELERATE"):
        env.pop(key, None)
    return env


def run_slurm(env, *args):
    return subprocess.run(["bash", str(SLURM), *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)


@pytest.mark.parametrize("config", ["fsdp", "deepspeed_zero3"])
def test_slurm_two_nodes_compose_one_launch_per_node(fake_slurm, config):
    """The SEED line on 2 nodes x 8 GPUs: each node's accelerate gets its own rank and the same rendezvous."""
    result = run_slurm(fake_slurm, "--accelerate_config", config, "--script_path", SCRIPT, "--lora", "True",
                       "--learning_rate", "1e-4")
    assert result.returncode == 0, result.stdout + result.stderr
    launches = [json.loads(line[len("LAUNCH "):]) for line in result.stdout.splitlines() if line.startswith("LAUNCH ")]
    assert [launch["machine_rank"] for launch in launches] == [0, 1]
    for rank, launch in enumerate(launches):
        assert launch["num_machines"] == 2 and launch["num_processes"] == 16
        assert launch["nnodes"] == "2" and launch["nproc_per_node"] == "8" and launch["node_rank"] == rank
        assert launch["master_addr"] == "gpu-node-07" and launch["master_port"] == str(20000 + 4242 % 10000)
        assert launch["rdzv_backend"] == "static"
        assert launch["use_fsdp"] == (config == "fsdp") and launch["use_deepspeed"] == (config != "fsdp")
        assert launch["ds_cmd"] is None  # DeepSpeed goes through torchrun (standard launcher), not pdsh/ssh
        assert launch["training_script"] == SCRIPT
        assert launch["training_script_args"] == ["--lora", "True", "--learning_rate", "1e-4"]
        assert str(CONFIGS / f"{config}.yaml") in launch["argv"]
    assert launches[0]["fsdp_version"] == ("2" if config == "fsdp" else None)
    assert "srun-option --ntasks=2" in result.stderr and "srun-option --ntasks-per-node=1" in result.stderr


def test_slurm_passes_script_flags_that_look_like_its_own_after_double_dash(fake_slurm):
    result = run_slurm(fake_slurm, "--script_path", SCRIPT, "--", "--output_dir", "out dir", "--script_path", "x")
    assert result.returncode == 0, result.stderr
    launch = json.loads(next(l for l in result.stdout.splitlines() if l.startswith("LAUNCH "))[len("LAUNCH "):])
    assert launch["training_script_args"] == ["--output_dir", "out dir", "--script_path", "x"]
    assert str(CONFIGS / "ddp.yaml") in launch["argv"]  # the default config


def test_slurm_unknown_config_is_a_clear_error(fake_slurm):
    result = run_slurm(fake_slurm, "--accelerate_config", "fsdp3", "--script_path", SCRIPT)
    assert result.returncode == 2
    assert "unknown accelerate config 'fsdp3'" in result.stderr
    assert "cpu ddp deepspeed deepspeed_zero2 deepspeed_zero3 fsdp" in result.stderr
    assert "LAUNCH" not in result.stdout


def test_slurm_needs_gpu_count_and_slurm(fake_slurm):
    no_gpus = {k: v for k, v in fake_slurm.items() if k != "SLURM_GPUS_ON_NODE"}
    no_gpus["PATH"] = f"{Path(fake_slurm['PATH'].split(os.pathsep)[0])}{os.pathsep}/usr/bin:/bin"  # no nvidia-smi
    result = run_slurm(no_gpus, "--script_path", SCRIPT)
    assert result.returncode == 2 and "GPUS_PER_NODE" in result.stderr
    result = run_slurm({**no_gpus, "SLURM_GPUS_PER_NODE": "h100:4"}, "--script_path", SCRIPT)
    assert result.returncode == 0 and '"nproc_per_node": "4"' in result.stdout
    outside = {k: v for k, v in fake_slurm.items() if k != "SLURM_JOB_NODELIST"}
    result = run_slurm(outside, "--script_path", SCRIPT)
    assert result.returncode == 2 and "sbatch" in result.stderr


def test_slurm_dry_run_prints_the_srun_command(fake_slurm):
    result = run_slurm({**fake_slurm, "DLLM_SLURM_DRY_RUN": "1"}, "--accelerate_config", "fsdp",
                       "--script_path", SCRIPT, "--lora", "True")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("srun --nodes=2 --ntasks=2") and "LAUNCH" not in result.stdout
    assert "--num_processes 16" in line and "--main_process_ip gpu-node-07" in line and "--lora True" in line


# ---- real runs on CPU -----------------------------------------------------------------------------


def test_cpu_config_single_process_step(single_process_step, one_step_workspace):
    """cpu.yaml: one process took the whole 4-row set in its one step, and saved a loadable model."""
    out, result = single_process_step
    assert logged(result, "epoch")[0] == pytest.approx(1.0)  # 4 rows / (1 process x batch 4) per step
    assert logged(result, "masked_fraction")[0] == pytest.approx(1.0)  # t = 1: every answer token masked
    model = Llama3ForMaskedLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.mask_token_id == tokenizer.mask_token_id


def test_ddp_two_processes_equal_one_process_with_the_whole_batch(single_process_step, one_step_workspace):
    """ddp.yaml, 2 processes x batch 2 == 1 process x batch 4 after one SGD step: same loss, same weights."""
    out, result = one_sgd_step(one_step_workspace, "ddp", "ddp", TWO_CPU_PROCESSES, batch_size=2)
    reference_out, reference = single_process_step
    assert logged(result, "epoch")[0] == pytest.approx(1.0)  # 2 processes x 2 rows covered the 4-row set
    assert logged(result, "loss")[0] == pytest.approx(logged(reference, "loss")[0], rel=1e-3)
    assert_same_weights(out, reference_out, one_step_workspace["base"])


def test_ddp_lora_two_ranks_train_and_save_loadable_checkpoint(tmp_path, char_tokenizer):
    """ddp.yaml with LoRA on 2 processes: both ranks train (per-rank RNG states, half the steps per epoch),
    the adapter and the merged full model are written, and the merged model loads with its mask token."""
    base, _ = checkpoint_without_mask_token(tmp_path, char_tokenizer, LlamaForCausalLM,
                                            tiny_llama_config(vocab_size=len(char_tokenizer) - 1))
    data = alpaca_fixture(tmp_path / "alpaca.json", n=16)
    out = tmp_path / "out"
    result = accelerate_launch("ddp", TWO_CPU_PROCESSES, [
        "--model_name_or_path", str(base), "--dataset_args", f"{data}[train:16]", "--output_dir", str(out),
        "--per_device_train_batch_size", "2", "--max_steps", "2", "--logging_steps", "1", "--learning_rate", "1e-2",
        "--save_strategy", "steps", "--save_steps", "2", "--report_to", "none", "--use_cpu", "True",
        "--max_seq_length", "64", "--lora", "True", "--r", "4", "--lora_alpha", "8",
        "--target_modules", "q_proj", "v_proj"])

    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "rng_state_0.pth").exists() and (checkpoint / "rng_state_1.pth").exists()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["log_history"][0]["epoch"] == pytest.approx(0.25)  # 16 rows / (2 processes x 2) = 4 steps
    assert all(l == l and l < 20 for l in logged(result, "loss"))  # finite, sane

    assert (out / "adapter" / "adapter_config.json").exists()
    model = Llama3ForMaskedLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.mask_token_id is not None and model.config.mask_token_id == tokenizer.mask_token_id
    start = LlamaForCausalLM.from_pretrained(base).state_dict()
    merged = model.state_dict()
    assert not torch.equal(start["model.layers.0.self_attn.q_proj.weight"],
                           merged["model.layers.0.self_attn.q_proj.weight"])  # LoRA delta merged in
    assert torch.equal(start["model.layers.0.mlp.up_proj.weight"], merged["model.layers.0.mlp.up_proj.weight"])


def test_ddp_two_ranks_train_on_packed_rows(tmp_path, char_tokenizer):
    """ddp.yaml with --packing on 2 processes: each rank's packs hold a different number of documents, and the
    per-document times, the sequence normaliser summed over ranks and the block-diagonal attention all hold."""
    base, _ = checkpoint_without_mask_token(tmp_path, char_tokenizer, LlamaForCausalLM,
                                            tiny_llama_config(vocab_size=len(char_tokenizer) - 1))
    data = alpaca_fixture(tmp_path / "alpaca.json", n=24)
    result = accelerate_launch("ddp", TWO_CPU_PROCESSES, [
        "--model_name_or_path", str(base), "--dataset_args", f"{data}[train:24]", "--output_dir", str(tmp_path / "o"),
        "--per_device_train_batch_size", "1", "--max_steps", "2", "--logging_steps", "1", "--learning_rate", "1e-2",
        "--save_strategy", "no", "--report_to", "none", "--use_cpu", "True", "--max_seq_length", "96",
        "--packing", "True", "--loss_normalization", "sequence"])
    assert re.search(r"packing train: 24 conversations in \d rows of 96 tokens", result.stdout + result.stderr)
    losses = logged(result, "loss")
    assert len(losses) == 2 and all(l == l and 0 < l < 20 for l in losses)


# Checked before the fixtures run (an in-test importorskip would first pay for the reference run).
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None or shutil.which("c++") is None,
    reason="needs deepspeed (pip install -e '.[deepspeed]') and a C++ compiler: on CPU DeepSpeed JIT-compiles "
           "its shared-memory comm op on first use (minutes, cached in ~/.cache/torch_extensions)")


@needs_deepspeed
@pytest.mark.parametrize("config", ["deepspeed", "deepspeed_zero3"])
def test_deepspeed_two_processes_equal_one_process(single_process_step, one_step_workspace, config):
    """DeepSpeed ZeRO-2 (deepspeed.yaml) and ZeRO-3 on 2 CPU processes: one SGD step gives the single-process
    weights, and Trainer.save_model writes a full checkpoint (ZeRO-3: zero3_save_16bit_model)."""
    out, result = one_sgd_step(one_step_workspace, config, config, TWO_CPU_PROCESSES, batch_size=2,
                               extra=("--save_strategy", "steps", "--save_steps", "1"))
    reference_out, reference = single_process_step
    # DeepSpeed's own checkpoint: ZeRO partitions from both ranks.
    assert len(list((out / "checkpoint-1" / "global_step1").glob("*zero_pp_rank_1_*"))) >= 1
    assert logged(result, "loss")[0] == pytest.approx(logged(reference, "loss")[0], rel=1e-3)
    assert_same_weights(out, reference_out, one_step_workspace["base"])
    Llama3ForMaskedLM.from_pretrained(out)


PT_SCRIPT = "examples/llama3/pt.py"


def pt_sgd_step(workspace, name: str, config: str, launch_flags: list[str], batch_size: int):
    """One SGD step of ``dllm pt`` (examples/llama3/pt.py) on 4 raw-text documents of different lengths, one packed
    row each (so 2 ranks hold different token counts)."""
    docs = workspace["tmp"] / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": "w" * n}) + "\n" for n in (36, 41, 47, 55)))
    out = workspace["tmp"] / name
    return out, accelerate_launch(config, launch_flags, [
        "--model_name_or_path", str(workspace["base"]), "--dataset_args", f"{docs}[train:4]", "--output_dir", str(out),
        "--per_device_train_batch_size", str(batch_size), *ONE_SGD_STEP], script=PT_SCRIPT)


@pytest.fixture(scope="module")
def single_process_pt_step(one_step_workspace):
    return pt_sgd_step(one_step_workspace, "pt-single", "cpu", [], batch_size=4)


@pytest.mark.parametrize("config", ["ddp", pytest.param("deepspeed", marks=needs_deepspeed),
                                    pytest.param("deepspeed_zero3", marks=needs_deepspeed)])
def test_pretraining_two_processes_equal_one_process(single_process_pt_step, one_step_workspace, config):
    """dllm pt under ddp.yaml and DeepSpeed ZeRO-2/3, 2 processes x batch 2 == 1 process x batch 4 after one SGD step:
    same loss, same weights."""
    out, result = pt_sgd_step(one_step_workspace, f"pt-{config}", config, TWO_CPU_PROCESSES, batch_size=2)
    reference_out, reference = single_process_pt_step
    assert logged(result, "epoch")[0] == pytest.approx(1.0)  # 2 processes x 2 rows covered the 4 rows
    assert logged(result, "loss")[0] == pytest.approx(logged(reference, "loss")[0], rel=1e-3)
    assert_same_weights(out, reference_out, one_step_workspace["base"])

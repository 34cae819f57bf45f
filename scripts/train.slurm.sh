#!/usr/bin/env bash
# Multi-node training under Slurm: one `accelerate launch` per node (srun, one task per node), each starting
# one process per GPU of its node; node 0 is the rendezvous host.
#
#   sbatch --nodes=2 --gres=gpu:8 scripts/train.slurm.sh \
#       --accelerate_config "fsdp" \
#       --script_path "examples/llama3/sft.py" \
#       --lora True
#
# Options read here (anywhere on the line, `--name value` or `--name=value`):
#   --accelerate_config NAME   scripts/accelerate_configs/NAME.yaml: cpu, ddp, fsdp, deepspeed, deepspeed_zero2,
#                              deepspeed_zero3 (or a path to a .yaml file). Default: ddp.
#   --script_path PATH         the training script. Default: examples/llama3/sft.py.
#   --                         everything after it goes to the script unread.
# Every other argument goes to the training script, in order.
#
# Environment: MASTER_PORT (default 20000 + job id mod 10000), GPUS_PER_NODE (default: SLURM_GPUS_ON_NODE,
# else SLURM_GPUS_PER_NODE, else `nvidia-smi -L`), ACCELERATE (the accelerate command, default `accelerate`),
# DLLM_SLURM_DRY_RUN=1 prints the srun command instead of running it.
# Submit from the repository root (relative paths resolve against it; Slurm runs a copy of this file).
#
#SBATCH --job-name=dllm-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=32
#SBATCH --output=%x-%j.out
#SBATCH --time=3-00:00:00

set -euo pipefail

die() { echo "train.slurm.sh: $*" >&2; exit 2; }

# ===== Arguments =====
accelerate_config="ddp"
script_path="examples/llama3/sft.py"
script_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --accelerate_config) [[ $# -ge 2 ]] || die "--accelerate_config needs a value"; accelerate_config="$2"; shift 2 ;;
    --accelerate_config=*) accelerate_config="${1#*=}"; shift ;;
    --script_path) [[ $# -ge 2 ]] || die "--script_path needs a value"; script_path="$2"; shift 2 ;;
    --script_path=*) script_path="${1#*=}"; shift ;;
    --) shift; script_args+=("$@"); break ;;
    *) script_args+=("$1"); shift ;;
  esac
done

# ===== Paths (Slurm runs a spooled copy of this file: resolve against the submit directory) =====
root="${SLURM_SUBMIT_DIR:-$PWD}"
cd "$root"
config_dir="$root/scripts/accelerate_configs"
if [[ "$accelerate_config" == *.yaml || "$accelerate_config" == */* ]]; then
  config_file="$accelerate_config"
else
  config_file="$config_dir/$accelerate_config.yaml"
fi
if [[ ! -f "$config_file" ]]; then
  available=""
  for yaml_file in "$config_dir"/*.yaml; do
    [[ -f "$yaml_file" ]] && available+="$(basename "$yaml_file" .yaml) "
  done
  die "unknown accelerate config '$accelerate_config' (no file $config_file);" \
    "available in $config_dir: ${available:-none}"
fi
[[ -f "$script_path" ]] || die "training script '$script_path' not found (relative to $root)"

# ===== Cluster layout =====
[[ -n "${SLURM_JOB_NODELIST:-}" ]] || die "SLURM_JOB_NODELIST is not set: submit this script with sbatch"
num_machines="${SLURM_NNODES:-1}"
gpus_per_node="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-}}"
if [[ -z "$gpus_per_node" && -n "${SLURM_GPUS_PER_NODE:-}" ]]; then
  gpus_per_node="${SLURM_GPUS_PER_NODE##*:}"  # "h100:8" -> 8
fi
if [[ -z "$gpus_per_node" ]] && command -v nvidia-smi >/dev/null 2>&1; then
  gpus_per_node=$(nvidia-smi -L | grep -c '^GPU' || true)
fi
[[ "$gpus_per_node" =~ ^[1-9][0-9]*$ ]] \
  || die "cannot tell how many GPUs each node has (got '${gpus_per_node}'):" \
    "request them with --gres=gpu:N or set GPUS_PER_NODE"
num_processes=$((num_machines * gpus_per_node))
# Read every host (no `| head -n 1`: under pipefail, scontrol's SIGPIPE would kill the job at random).
hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
main_process_ip="${hosts%%$'\n'*}"
[[ -n "$main_process_ip" ]] || die "scontrol returned no host for SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST"
main_process_port="${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 10000))}"

echo "===== dllm slurm launch ====="
echo "nodes=$num_machines gpus_per_node=$gpus_per_node processes=$num_processes"
echo "main_process=$main_process_ip:$main_process_port config=$config_file"
echo "script=$script_path args=${script_args[*]:-}"

# ===== Environment =====
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# ===== Launch =====
# $SLURM_PROCID (the node's rank, one task per node) must be read inside each task, not here where it is 0:
# each task runs `bash -c` with the accelerate command as $0 and the rest as "$@".
launch_args=(
  --config_file "$config_file"
  --num_machines "$num_machines"
  --num_processes "$num_processes"
  --main_process_ip "$main_process_ip"
  --main_process_port "$main_process_port"
  --rdzv_backend static
  --same_network
)
cmd=(
  srun --nodes="$num_machines" --ntasks="$num_machines" --ntasks-per-node=1 --kill-on-bad-exit=1
  bash -c 'exec "$0" launch --machine_rank "$SLURM_PROCID" "$@"'
  "${ACCELERATE:-accelerate}" "${launch_args[@]}" "$script_path" "${script_args[@]}"
)
if [[ "${DLLM_SLURM_DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
exec "${cmd[@]}"

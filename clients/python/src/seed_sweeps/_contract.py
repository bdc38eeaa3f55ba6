"""The environment contract between a worker and a command job, as `worker contract --json` prints
it (protocol/src/command.rs is its one definition; the tests check these names against it)."""

JOB_ID = "SWEEP_JOB_ID"
ATTEMPT = "SWEEP_ATTEMPT"
PARAMS = "SWEEP_PARAMS"
METRICS = "SWEEP_METRICS"
CHECKPOINT_DIR = "SWEEP_CHECKPOINT_DIR"
STOP_FILE = "SWEEP_STOP_FILE"
MASTER_ADDR = "MASTER_ADDR"
MASTER_PORT = "MASTER_PORT"
NNODES = "NNODES"
NODE_RANK = "NODE_RANK"
#: Exit code that means "diverged" (a result, never retried).
EXIT_DIVERGED = 3

#: Every contract variable this package reads.
READS = (JOB_ID, ATTEMPT, PARAMS, METRICS, CHECKPOINT_DIR, STOP_FILE, MASTER_ADDR, MASTER_PORT, NNODES, NODE_RANK)

#: torchrun's own variables (not the worker's contract): read where the program runs under torchrun.
TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

#: The client's settings (not the job contract): where the coordinator is and its token.
SERVER = "SWEEP_SERVER"
TOKEN = "SWEEP_TOKEN"

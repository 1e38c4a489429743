"""Upper bounds of every size-like setting, in one place.

A size is trusted only after it is checked: a group size of 10^9 or a hidden width of 10^7 would
otherwise be accepted and only fail (or swap) once gigabytes are allocated. The bounds are far
above anything the paper or a 2-core machine runs, and far below what exhausts a large machine.
`policytrim.config` checks configs against them, `policytrim.policies.tinyvla` checks checkpoint specs
(``config.json``) against them before any tensor is allocated. Raise a bound here if a real run
needs more.
"""

from __future__ import annotations

from policytrim.errors import InputError

# policy architecture (config and checkpoint spec)
MAX_CHUNK_SIZE = 256  # H, actions per call
MAX_HIDDEN_DIM = 4096  # trunk / flow-head width
MAX_LAYERS = 32  # trunk depth, flow-head depth
MAX_EMBED_DIM = 1024  # text and image feature widths
MAX_OBS_DIM = 4096  # state and action dimensions
MAX_FLOW_STEPS = 1000  # K denoising steps
MAX_VOCABULARY = 100_000  # words / instructions a policy knows
MAX_IMAGE_SIZE = 512  # pixels per side

# rollouts and training
MAX_GROUP_SIZE = 1024  # G
MAX_GROUPS_PER_EPOCH = 4096
MAX_TRAJECTORIES_PER_EPOCH = 65_536  # G x groups per epoch (one epoch's rollouts live in memory)
MAX_WORKERS = 256  # env worker processes
MAX_ENVS_PER_WORKER = 4096  # envs one worker keeps
MAX_CLUSTER_CPUS = 4096  # CPUs a local Ray cluster is started with
MAX_WORKER_MEMORY_MB = 4_194_304  # memory reserved per Ray env worker (4 TiB)
MAX_ACTOR_RESTARTS = 10_000  # restarts of one Ray env worker
MAX_EPOCHS = 1_000_000
MAX_UPDATE_EPOCHS = 100
MAX_MICRO_BATCH = 65_536
MAX_EPISODES = 100_000  # evaluation / validation / demonstration episodes per task
MAX_ITERATIONS = 10_000_000  # behaviour-cloning gradient steps
MAX_BATCH_SIZE = 65_536
MAX_HORIZON = 100_000  # environment steps per episode
MAX_PAUSE_OR_DETOUR = 10_000  # steps of a demonstration pause or detour

# serving (`policytrim serve`)
MAX_MESSAGE_BYTES = 1 << 30  # largest request a server may be told to accept (1 GiB)
MAX_THREADS = 1024  # torch threads for policy calls
MAX_SEED = 2**32 - 1
MAX_MESSAGE_OBJECTS = 10_000  # values in one request (an observation holds a few dozen)
MAX_MESSAGE_DEPTH = 16  # nesting of maps / lists in one request (an observation nests three)

# config files
MAX_CONFIG_BYTES = 1 << 20  # a config file larger than 1 MiB is refused unread
MAX_CONFIG_NODES = 10_000  # values in a config after YAML aliases are expanded (a full config has ~120)


def check_int(name: str, value: object, lo: int, hi: int, hint: str = "", error: type[InputError] = InputError) -> None:
    """``error`` unless ``value`` is an integer (not a bool) in [lo, hi]; ``hint`` follows the range."""
    if not (isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi):
        raise error(f"{name} must be an integer in [{lo}, {hi}]{hint}, got {value!r}")

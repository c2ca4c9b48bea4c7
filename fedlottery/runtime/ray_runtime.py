"""Ray for a federated run: a private local instance, or an explicit cluster that answers at once.

- No address configured (`simulation.ray_address` unset and no $RAY_ADDRESS): always a NEW local Ray instance
  (`ray.init(address="local")`), never the cluster another job started on this machine with `ray start` (a bare
  `ray.init()` attaches to the one named in /tmp/ray/ray_current_cluster, and hangs when that file is stale).
- An explicit address ("host:port", "ray://host:port"): its port is probed first, so an unreachable cluster fails
  in seconds instead of minutes of retries (a port that answers but is no Ray GCS fails after about a minute,
  `CONNECT_ATTEMPTS`). "auto" is refused: it picks whichever cluster ran last.
- What the machine cannot give (more CPUs per actor than it has, GPUs it lacks, CUDA without a usable GPU) is
  refused before anything starts (`check_resources`), and so is a `cuda:<i>` no client actor can see: Ray shows an
  actor only the GPUs it assigns it, numbered from cuda:0 (`check_actor_gpu_index`, for clusters too).

Flower's `run_simulation` reuses an initialised Ray, so `start_ray(cfg)` before it decides where the actors run.
`stop_ray()` shuts down what `start_ray` started (and only that); the command line calls it on Ctrl-C.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
import threading
from typing import Any

from fedlottery.config import ConfigError, FederatedConfig, ImpConfig, check_ray_address
from fedlottery.errors import ClusterError

PROBE_TIMEOUT_S = 3.0
# Ray tries to reach a cluster's GCS 20 times (about 35 s each) before giving up; behind a port that answers
# (the probe passed) but is not a Ray GCS, that is minutes. Two attempts bound it to about a minute.
CONNECT_ATTEMPTS = 2
_LOCAL = "local"
PRELOAD_ENV = "RAY_preload_python_modules"  # Ray's own setting: modules every worker imports as it starts
ACTOR_MODULES = ("torch", "flwr.simulation.ray_transport.ray_actor", "fedlottery.runtime.client_app")
_NOSET_CUDA_ENV = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"  # Ray leaves CUDA_VISIBLE_DEVICES alone when set


# ---- what this machine has --------------------------------------------------------------------------------
def machine_cpus() -> int:
    """CPUs this process may use: affinity mask and cgroup (v2 or v1) quota, like Ray's own detection."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return count


def _cgroup_cpu_quota() -> float | None:
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:  # cgroup v2: "<quota> <period>" or "max <period>"
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as q, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as p:
            quota_us, period_us = int(q.read()), int(p.read())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def cuda_gpus() -> int:
    """CUDA GPUs torch can use in this process (0 for a CPU build of torch or no driver)."""
    import torch

    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver counts as no GPU
        return 0


def _no_cuda_reason() -> str:
    import torch

    build = f"torch {torch.__version__}, " + (f"CUDA {torch.version.cuda} build" if torch.version.cuda
                                               else "a CPU-only build")
    return f"torch finds no usable CUDA GPU on this machine ({build})"


# ---- the address ------------------------------------------------------------------------------------------
def cluster_address(cfg: FederatedConfig) -> str | None:
    """The Ray cluster a run joins (`simulation.ray_address`, else $RAY_ADDRESS), or None for a private local
    Ray. Raises ConfigError for 'auto' and malformed addresses, naming where the address came from."""
    address = cfg.simulation.ray_address
    key = "simulation.ray_address"
    if not address:
        address, key = os.environ.get("RAY_ADDRESS", ""), "$RAY_ADDRESS"
    address = address.strip()
    if not address or address == _LOCAL:
        return None
    check_ray_address(address, key)
    return address


# ---- up-front checks --------------------------------------------------------------------------------------
def check_resources(cfg: FederatedConfig) -> None:
    """Refuse what a local run cannot get on this machine (a cluster says for itself what it has)."""
    sim = cfg.simulation
    if cluster_address(cfg) is not None:
        check_actor_gpu_index(cfg)
        return
    cpus = machine_cpus()
    if sim.num_cpus > cpus:
        raise ConfigError(f"simulation.num_cpus: {sim.num_cpus:g} CPUs per client actor, but this machine has "
                          f"{cpus}; set simulation.num_cpus <= {cpus}")
    if sim.actors is not None and sim.actors * sim.num_cpus > cpus:
        most = max(1, math.floor(cpus / sim.num_cpus))
        raise ConfigError(f"simulation.actors: {sim.actors} actors x simulation.num_cpus {sim.num_cpus:g} = "
                          f"{sim.actors * sim.num_cpus:g} CPUs, but this machine has {cpus}; set simulation.actors "
                          f"<= {most} (or lower num_cpus)")
    wants_cuda = sim.device.startswith("cuda")
    if not (wants_cuda or sim.num_gpus > 0):
        return
    gpus = cuda_gpus()
    if gpus == 0:
        if wants_cuda:
            raise ConfigError(f"simulation.device: {sim.device!r}, but {_no_cuda_reason()}; use device: cpu (or "
                              "auto) with simulation.num_gpus: 0, or run where a GPU is")
        raise ConfigError(f"simulation.num_gpus: {sim.num_gpus:g} GPUs per client actor, but {_no_cuda_reason()}; "
                          "set simulation.num_gpus: 0")
    if sim.num_gpus > gpus:
        raise ConfigError(f"simulation.num_gpus: {sim.num_gpus:g} GPUs per client actor, but this machine has "
                          f"{gpus}; set simulation.num_gpus <= {gpus}")
    if sim.device.startswith("cuda:") and int(sim.device[5:]) >= gpus:
        raise ConfigError(f"simulation.device: {sim.device!r}, but this machine has {gpus} CUDA GPU(s) "
                          f"(cuda:0..cuda:{gpus - 1}); use 'cuda' or an index below {gpus}")
    check_actor_gpu_index(cfg)


def check_actor_gpu_index(cfg: FederatedConfig) -> None:
    """Ray shows a client actor only the GPUs it assigns it (CUDA_VISIBLE_DEVICES), numbered from cuda:0: with
    num_gpus <= 1 that is cuda:0 alone, whichever physical GPU it is. Refuse an index no actor can see."""
    sim = cfg.simulation
    if not sim.device.startswith("cuda:") or os.environ.get(_NOSET_CUDA_ENV, "").lower() in ("1", "true"):
        return
    visible = max(1, math.floor(sim.num_gpus))
    if int(sim.device[5:]) >= visible:
        raise ConfigError(
            f"simulation.device: {sim.device!r}, but Ray shows each client actor only the {visible} GPU(s) it assigns "
            f"it (simulation.num_gpus {sim.num_gpus:g}), numbered from cuda:0; use device: cuda (or auto), and choose "
            "the physical GPUs with CUDA_VISIBLE_DEVICES where Ray starts (`ray start`, or this command)")


def check_imp_resources(cfg: ImpConfig) -> None:
    """`training.device` of a centralized IMP run must exist on this machine."""
    device = cfg.training.device
    if not device.startswith("cuda"):
        return
    gpus = cuda_gpus()
    if gpus == 0:
        raise ConfigError(f"training.device: {device!r}, but {_no_cuda_reason()}; use training.device: cpu")
    if device.startswith("cuda:") and int(device[5:]) >= gpus:
        raise ConfigError(f"training.device: {device!r}, but this machine has {gpus} CUDA GPU(s); use 'cuda' or "
                          f"an index below {gpus}")


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Open (and close) a TCP connection to the address's port; raise ClusterError at once when nothing answers."""
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err) or type(err).__name__
        raise ClusterError(
            f"cannot reach the Ray cluster at {address!r} ({why}); start one (`ray start --head` prints its "
            "address) or fix simulation.ray_address / $RAY_ADDRESS"
        ) from None


# ---- starting and stopping --------------------------------------------------------------------------------
def ray_init_args(cfg: FederatedConfig) -> dict[str, Any]:
    """Keyword arguments for `ray.init` (also Flower's backend `init_args`): a new local instance sized by the
    config, or the explicit cluster."""
    address = cluster_address(cfg)
    common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address is not None:
        return {"address": address, **common}
    sim = cfg.simulation
    args: dict[str, Any] = {"address": _LOCAL, "include_dashboard": False, **common}
    if sim.actors is not None:
        # Flower starts as many actors as the resources allow: give Ray exactly `actors` actors' worth of CPUs.
        args["num_cpus"] = round(sim.actors * sim.num_cpus)  # whole: SimulationConfig.validate checks it
    return args


def start_ray(cfg: FederatedConfig, state_dir: str | None = None) -> None:
    """Initialise Ray for `cfg` unless it already is: a private local instance, or the configured cluster after
    a quick probe. Raises ConfigError for resources the machine lacks, ClusterError for an unreachable cluster
    or a local Ray that would not start (`START_ATTEMPTS` tries, backing off).

    state_dir: the run's client-state directory, given to every client actor as $FEDLOTTERY_STATE_DIR (the
    node's own configuration, fedlottery.runs.client_state.node_state_dir); a Ray this function started for
    another directory is restarted, so a --seeds run's actors never write into the previous seed's."""
    import ray

    from fedlottery.runs.client_state import STATE_DIR_ENV

    if ray.is_initialized():
        if state_dir is None or _STARTED.get("state_dir", state_dir) == state_dir:
            return
        ray.shutdown()  # ours, started for another run directory
    check_resources(cfg)
    args = ray_init_args(cfg)
    env_vars = {STATE_DIR_ENV: state_dir} if state_dir else {}
    if args["address"] != _LOCAL:
        probe(args["address"])
        try:
            with _fewer_connect_attempts():
                ray.init(**({"runtime_env": {"env_vars": env_vars}} if env_vars else {}), **args)
        except (ConnectionError, RuntimeError, TimeoutError) as err:
            raise ClusterError(
                f"cannot reach the Ray cluster at {args['address']!r} ({' '.join(str(err).split())}); start one "
                "(`ray start --head`) or fix simulation.ray_address / $RAY_ADDRESS"
            ) from None
    else:
        # Like Flower's own start-up: client actors import the app from this process's sys.path.
        pythonpath = os.pathsep.join(sys.path)
        if os.environ.get("PYTHONPATH"):
            pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
        os.environ["PYTHONPATH"] = pythonpath
        # Ray starts its workers at nice 15; the client actors ARE the work, and a busy driver or a neighbour
        # then starved them past their round deadline (measured: 4 honest clients of one MNIST round).
        os.environ.setdefault("RAY_worker_niceness", "0")
        _warm_workers(cfg)
        # Workers inherit the raylet's environment, so a private Ray needs no runtime_env, and with none Ray
        # starts Flower's actors on the workers it prestarted (warm) instead of new ones of their own.
        _set_worker_env(STATE_DIR_ENV, state_dir)
        _init_local(ray, args)
    _STARTED.clear()
    _STARTED["state_dir"] = state_dir


def _warm_workers(cfg: FederatedConfig) -> None:
    """A client actor imports torch, Flower's actor and the ClientApp before it can take a client (~3 s). Ray
    prestarts one worker per CPU when the driver connects; told to preload these modules (its own setting, read
    from this process's environment by the raylet it starts), they import them while the driver is still
    building θ0 and the partitions, and Flower's actors start on them warm. torch then loads before Ray sets
    the actor's OMP_NUM_THREADS, so the actor applies it itself (client_cache.threads_as_ray_assigned). GPU
    runs are left as they were (Ray sets CUDA_VISIBLE_DEVICES per actor)."""
    if cfg.simulation.num_gpus > 0 or cfg.simulation.device.startswith("cuda"):
        _set_worker_env(PRELOAD_ENV, None)
    elif PRELOAD_ENV not in os.environ or PRELOAD_ENV in _WORKER_ENV:  # a user's own setting is kept
        _set_worker_env(PRELOAD_ENV, ",".join(ACTOR_MODULES))


_WORKER_ENV: set[str] = set()  # variables start_ray put in this process's environment for Ray's workers


def _set_worker_env(name: str, value: str | None) -> None:
    """Put `name` in the environment the raylet (and so every worker) inherits, or take out what an earlier
    start in this process put there (a variable the user set is never taken out)."""
    if value is not None:
        os.environ[name] = value
        _WORKER_ENV.add(name)
    elif name in _WORKER_ENV:
        os.environ.pop(name, None)
        _WORKER_ENV.discard(name)


class BackgroundStart:
    """`start_ray` on a thread of its own, so that Ray's processes come up (2.5-4 s, mostly waiting) while the
    driver loads the data, builds the partitions and imports Flower. `wait()` returns once Ray is up and raises
    what `start_ray` raised. The thread then stays parked for the life of the process: Ray starts its processes
    with PR_SET_PDEATHSIG, so they would be killed the moment the thread that spawned them ended."""

    def __init__(self, cfg: FederatedConfig, state_dir: str | None = None):
        _exit_on_sigterm()
        self._up = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, args=(cfg, state_dir), name="fedlottery-ray-start",
                                        daemon=True)
        self._thread.start()

    def _start(self, cfg: FederatedConfig, state_dir: str | None) -> None:
        try:
            with _without_thread_warning():
                start_ray(cfg, state_dir)
        except BaseException as err:  # noqa: BLE001 - handed to the caller by wait()
            self._error = err
        finally:
            self._up.set()
        threading.Event().wait()  # parked: Ray's processes die with this thread

    def wait(self) -> None:
        self._up.wait()
        if self._error is not None:
            raise self._error


def _exit_on_sigterm() -> None:
    """What ray.init does in the main thread and cannot from another: SIGTERM exits through sys.exit, so the
    atexit hooks (Ray's shutdown among them) run. A handler someone else installed is kept."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))


class _DropThreadWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in str(record.msg)


@contextlib.contextmanager
def _without_thread_warning():
    """Ray warns that it set no SIGTERM handler off the main thread; `_exit_on_sigterm` has set one."""
    ray_worker_log = logging.getLogger("ray._private.worker")
    drop = _DropThreadWarning()
    ray_worker_log.addFilter(drop)
    try:
        yield
    finally:
        ray_worker_log.removeFilter(drop)


_STARTED: dict = {}  # how start_ray last started Ray in this process (its actors' client-state directory)
START_ATTEMPTS = 3
START_BACKOFF_S = 2.0  # before the 2nd attempt; doubled before each later one


def _is_startup_timeout(err: BaseException) -> bool:
    """Ray's ways of saying its own processes did not come up in time on this machine (an overloaded or
    memory-short host): `wait_for_node`'s TimeoutError, the GCS's ConnectionError, the raylet's bare
    Exception "The current node timed out during startup"."""
    return isinstance(err, (TimeoutError, ConnectionError)) or "timed out" in str(err).lower()


def _init_local(ray, init_args: dict, sleep=None) -> None:
    """ray.init for a private local instance, retried with backoff when Ray's start-up times out (it does on a
    loaded machine: the raylet has 30 s to register); after the last attempt, one line with cause and fix."""
    import time

    sleep = sleep or time.sleep
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            ray.init(**init_args)
            return
        except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception for its start-up timeout
            if not _is_startup_timeout(err):
                raise
            cause = " ".join(str(err).split())[:300] or type(err).__name__
            with contextlib.suppress(Exception):
                ray.shutdown()  # whatever half-started is stopped before the next try
            if attempt < START_ATTEMPTS:
                sleep(START_BACKOFF_S * 2 ** (attempt - 1))
    raise ClusterError(
        f"a local Ray instance did not start in {START_ATTEMPTS} attempts ({cause}); this machine is probably "
        "overloaded or short of memory or /tmp space: free some (or run fewer jobs at once, a smaller "
        "simulation.actors) and run the same command again")


@contextlib.contextmanager
def _fewer_connect_attempts():
    """Lower Ray's GCS connection attempts while connecting (a module constant Ray reads at call time)."""
    try:
        from ray._private import ray_constants
    except ImportError:  # a Ray without that module: keep its own retries
        yield
        return
    saved = getattr(ray_constants, "NUM_REDIS_GET_RETRIES", None)
    if isinstance(saved, int):
        ray_constants.NUM_REDIS_GET_RETRIES = min(saved, CONNECT_ATTEMPTS)
    try:
        yield
    finally:
        if isinstance(saved, int):
            ray_constants.NUM_REDIS_GET_RETRIES = saved


def stop_ray() -> None:
    """Shut Ray down (its local processes with it) if it is up in this process; safe to call twice."""
    if "ray" not in sys.modules:
        return
    import ray

    if ray.is_initialized():
        ray.shutdown()


__all__ = [
    "check_actor_gpu_index", "check_imp_resources", "check_resources", "cluster_address", "cuda_gpus", "machine_cpus",
    "probe", "ray_init_args", "start_ray", "stop_ray", "BackgroundStart",
]

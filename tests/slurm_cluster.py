"""A one-node SLURM cluster on this machine, for the tests: Debian's munged, slurmctld and slurmd (SLURM 22.05,
installed by `make slurm`), started in the foreground with their keys, state, logs and sockets in one temporary
folder and on free ports, so they touch nothing of the machine's own and several can run side by side."""

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

PROGRAMS = ("mungekey", "munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo")
CPUS = 2


def unavailable() -> str | None:
    """Why no cluster can start here (a skip reason), or None."""
    missing = [program for program in PROGRAMS if shutil.which(program) is None]
    if missing:
        return f"no SLURM here ({', '.join(missing)} missing): `make slurm` installs it as root (apt)"
    if os.geteuid() != 0:
        return "slurmd runs jobs as their user only as root: run the SLURM tests as root (`make test` in CI is)"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def slurm_conf(folder: Path, node: str) -> str:
    """A few lines for one node of CPUS cores and one partition; no accounting, no cgroups (linuxproc tracking)."""
    return f"""\
ClusterName=hgmldl
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge.socket
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
NodeName={node} NodeAddr=127.0.0.1 CPUs={CPUS} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def end_with_the_tests() -> None:
    """Linux's PR_SET_PDEATHSIG: the daemon gets SIGTERM when the test process ends, even if it is killed."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


@contextmanager
def daemon(command: list[str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=end_with_the_tests
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(ready, what: str, folder: Path, daemons: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline or any(process.poll() is not None for process in daemons):
            logs = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in sorted(folder.glob("*.log")))
            raise RuntimeError(f"the test cluster's {what} did not start\n{logs}")
        time.sleep(0.2)


@contextmanager
def slurm_cluster(folder: Path) -> Iterator[dict[str, str]]:
    """Starts the cluster in `folder` and yields the environment its commands (sbatch, srun, submitit) need:
    SLURM_CONF naming its slurm.conf. Every daemon is stopped, and its jobs with it, when the block ends."""
    node = socket.gethostname()
    for name in ("state", "spool"):
        (folder / name).mkdir(parents=True)
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, node))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["mungekey", "--create", f"--keyfile={folder / 'munge.key'}"], check=True)
    munge = [f"--{name}={folder / file}" for name, file in (("socket", "munge.socket"), ("key-file", "munge.key"))]
    munge += [f"--{name}={folder / ('munged.' + name.split('-')[0])}" for name in ("pid-file", "seed-file")]
    # --force: munged refuses a socket folder that not everyone may enter, as pytest's temporary folders are.
    munged = ["munged", "--foreground", "--force", "--log-file=/dev/null", *munge]
    with ExitStack() as stack:
        daemons = [stack.enter_context(daemon(munged, folder / "munged.log"))]
        wait_until(lambda: (folder / "munge.socket").exists(), "munged", folder, daemons)
        for command in (["slurmctld", "-D", "-i", "-f", str(conf)], ["slurmd", "-D", "-N", node, "-f", str(conf)]):
            daemons.append(stack.enter_context(daemon(command, folder / f"{command[0]}.log")))

        def idle() -> bool:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            return state.stdout.strip() == "idle"

        wait_until(idle, "node", folder, daemons)
        yield env

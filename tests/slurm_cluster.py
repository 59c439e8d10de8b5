"""A real single-node SLURM for the tests (tests/test_slurm.py) and bench/bench_cluster.py.

Debian's packages -- `slurm-wlm` (slurmctld, slurmd, sbatch, squeue, scontrol, scancel) and `munge`
(SLURM's authentication) -- installed with apt-get where missing and possible (root or password-less
sudo), then started under a folder of the caller's: its own munge key and socket, state, spool and logs,
on free ports. Its slurm.conf is also put where every SLURM client looks, /etc/slurm/slurm.conf -- the
SLURM plugin's job step calls `srun` with the SLURM_* variables removed, SLURM_CONF among them -- but
only where no other slurm.conf is there (a machine with its own SLURM is left alone: SlurmUnavailable),
and it is removed again on stop(); one test cluster at a time (a lock). The node has
`slots` CPUs and each kickoff job asks for one (runtime.threads: 1), so `slots` jobs run at once; the
partitions are those profiles/slurm names, all on the one node. No accounting (slurmdbd): Snakemake's
SLURM plugin asks `squeue` for job states, and finished jobs stay in `scontrol show job` (MinJobAge)
with the scheduler's own start and end times.

    cluster = start(Path("/tmp/slurm"), slots=2)    # or: SlurmUnavailable, saying why
    subprocess.run([...snakemake --profile ...], env={**os.environ, **cluster.env})
    cluster.jobs()                                  # every job: id, state, start, end, Snakemake's comment
    cluster.stop()
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")  # where srun looks without SLURM_CONF
MARK = "# kickoff's test cluster (tests/slurm_cluster.py): removed when it stops"
LOCK = Path(tempfile.gettempdir()) / "kickoff-slurm-test.lock"  # one test cluster on a machine at a time
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
SBIN = ("/usr/sbin", "/sbin")  # the daemons live here, outside a normal user's PATH


class SlurmUnavailable(Exception):
    """No SLURM can be started here; the message says why, in one line."""


def _which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path=os.pathsep.join(SBIN))


def _as_root() -> list[str] | None:
    """The prefix that runs a command as root: none for root, `sudo -n` where it needs no password."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt-get where a program is missing; SlurmUnavailable if that
    cannot be done (no apt-get, neither root nor password-less sudo, the install failed)."""
    missing = [p for p in PROGRAMS if not _which(p)]
    if not missing:
        return
    what = f"no SLURM here ({', '.join(missing)} missing)"
    if not shutil.which("apt-get"):
        raise SlurmUnavailable(f"{what} and no apt-get to install {' and '.join(PACKAGES)}")
    root = _as_root()
    if root is None:
        raise SlurmUnavailable(f"{what}, and neither root nor password-less sudo to apt-get install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:  # stale or missing package lists: update them once and retry
        subprocess.run([*root, "apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=300)
        proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if still := [p for p in PROGRAMS if not _which(p)]:
        raise SlurmUnavailable(f"{' '.join(PACKAGES)} could not be installed (`{' '.join(install)}` exited "
                               f"{proc.returncode}; still missing: {', '.join(still)}): "
                               f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Job:
    """One SLURM job as the scheduler records it (scontrol show job)."""
    id: str
    state: str
    start: datetime | None
    end: datetime | None
    comment: str  # Snakemake's: rule_<rule> or rule_<rule>_wildcards_<value>

    @property
    def kickoff_job(self) -> str | None:
        """The job as DVC names it ('scaling_trials@64'), from the comment Snakemake gave it."""
        m = re.fullmatch(r"rule_(\w+?)(?:_wildcards_(\w+))?", self.comment or "")
        if not m:
            return None
        return f"{m.group(1)}@{m.group(2)}" if m.group(2) else m.group(1)

    @property
    def seconds(self) -> float | None:
        return (self.end - self.start).total_seconds() if self.start and self.end else None


def _time(value: str) -> datetime | None:
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None  # Unknown / None: not started or not ended


@dataclass
class Cluster:
    home: Path
    slots: int
    partitions: tuple[str, ...]
    root: list[str]
    started_s: float = 0.0  # seconds from the first daemon started to the node idle
    lock: object = None  # the open lock file, held while the cluster runs

    @property
    def conf(self) -> Path:
        return self.home / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, squeue, Snakemake and the jobs it submits) needs to find this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def command(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def jobs(self) -> list[Job]:
        """Every job the controller still knows (finished ones too, for MinJobAge), oldest first."""
        out = self.command("scontrol", "show", "job", "--oneliner").stdout
        jobs = []
        for line in out.splitlines():
            f = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" in f:
                state = f.get("JobState", "")
                # a pending job's start and a running one's end are the scheduler's forecasts, not times
                start = None if state == "PENDING" else _time(f.get("StartTime", ""))
                end = None if state in ("PENDING", "CONFIGURING", "RUNNING", "SUSPENDED") else _time(f.get("EndTime", ""))
                jobs.append(Job(f["JobId"], state, start, end, f.get("Comment", "")))
        return sorted(jobs, key=lambda j: int(j.id))

    def stop(self) -> None:
        """Cancel every job still queued or running, then stop the daemons (each by the pid it wrote) and
        any job step left behind by a daemon gone first (found by its open slurmd log: this cluster's)."""
        if (self.home / "slurmctld.pid").is_file():
            ids = self.command("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if ids:
                self.command("scancel", *ids, check=False)
                _wait(lambda: not self.command("squeue", "-h", "-o", "%i", check=False).stdout.split(), 30,
                      "end of the cancelled jobs", quiet=True)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            if (pid := _pid(self.home / pid_file)) is not None:
                subprocess.run([*self.root, "kill", str(pid)], capture_output=True)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            _wait(lambda: _pid(self.home / pid_file) is None, 15, f"{pid_file} gone", quiet=True)
        if SYSTEM_CONF.is_file() and SYSTEM_CONF.read_text().startswith(MARK):
            subprocess.run([*self.root, "rm", "-f", str(SYSTEM_CONF)], capture_output=True)
        log = str(self.home / "log" / "slurmd.log")
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and any(os.readlink(fd) == log for fd in (proc / "fd").iterdir()):
                    subprocess.run([*self.root, "kill", "-KILL", proc.name], capture_output=True)
            except OSError:
                continue
        if self.lock is not None:
            self.lock.close()  # releases the lock: the next test cluster may start
            self.lock = None


def start(home: Path, slots: int = 2, partitions: tuple[str, ...] = ("cpu", "gpu"), timeout: float = 60) -> Cluster:
    """Install where needed, then start munged, slurmctld and slurmd under `home`; wait until the node is
    idle. SlurmUnavailable (one line) where that cannot be done here."""
    ensure_installed()
    root = _as_root()
    if root is None:
        raise SlurmUnavailable("starting SLURM's daemons needs root or password-less sudo (slurmd starts the jobs)")
    lock = _hold_lock(timeout=900)
    began = time.monotonic()
    if SYSTEM_CONF.is_file() and not SYSTEM_CONF.read_text().startswith(MARK):
        lock.close()
        raise SlurmUnavailable(f"{SYSTEM_CONF} exists and is not kickoff's: this machine has a SLURM of its own, "
                               f"which the tests leave alone")
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)  # the munge socket is reached by the jobs' user through it
    for sub in ("munge", "state", "spool", "log"):
        (home / sub).mkdir(exist_ok=True)
    (home / "munge").chmod(0o700)
    key = home / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    if root:  # munged wants its key owned by the user it runs as
        subprocess.run([*root, "chown", "-R", "root:root", str(home / "munge")], check=True)
    socket_path = home / "munge.socket"
    host = socket.gethostname().split(".")[0]
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    lines = [
        "ClusterName=kickofftest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={socket_path}",
        "SlurmUser=root", "SlurmdUser=root",
        f"StateSaveLocation={home / 'state'}", f"SlurmdSpoolDir={home / 'spool'}",
        f"SlurmctldPidFile={home / 'slurmctld.pid'}", f"SlurmdPidFile={home / 'slurmd.pid'}",
        f"SlurmctldLogFile={home / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={home / 'log' / 'slurmd.log'}",
        # no cgroups in a container; no accounting database
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "MpiDefault=none",
        # one job per CPU; memory is not a consumable (the rules ask for a GPU node's 8 GB)
        "SchedulerType=sched/builtin", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "SlurmdParameters=config_overrides",  # the node has `slots` CPUs, whatever the machine has
        "MinJobAge=3600",  # finished jobs stay in scontrol (and squeue --states=all) for an hour
        "KillWait=5",  # seconds between scancel's SIGTERM and SIGKILL
        "ReturnToService=2", "SlurmctldTimeout=30", "SlurmdTimeout=30",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={slots} RealMemory={max(memory_mb, 1)} State=UNKNOWN",
        *(f"PartitionName={p} Nodes=ALL Default={'YES' if i == 0 else 'NO'} MaxTime=INFINITE State=UP OverSubscribe=NO"
          for i, p in enumerate(partitions)),
    ]
    cluster = Cluster(home, slots, partitions, root, lock=lock)
    cluster.conf.write_text("\n".join([MARK, *lines]) + "\n")
    subprocess.run([*root, "mkdir", "-p", str(SYSTEM_CONF.parent)], check=True)
    subprocess.run([*root, "install", "-m", "644", str(cluster.conf), str(SYSTEM_CONF)], check=True)
    env = {**os.environ, **cluster.env}
    daemons = (
        [_which("munged"), "--force", f"--key-file={key}", f"--socket={socket_path}",
         f"--pid-file={home / 'munged.pid'}", f"--log-file={home / 'log' / 'munged.log'}",
         f"--seed-file={home / 'munge' / 'munged.seed'}"],
        [_which("slurmctld"), "-c", "-i", "-f", str(cluster.conf)],
        [_which("slurmd"), "-f", str(cluster.conf), "-N", host],
    )
    for argv in daemons:
        proc = subprocess.run([*root, "env", f"SLURM_CONF={cluster.conf}", *argv], env=env, capture_output=True,
                              text=True, timeout=60)
        if proc.returncode != 0:
            cluster.stop()
            raise SlurmUnavailable(f"{Path(argv[0]).name} did not start (exit {proc.returncode}): "
                                   f"{(proc.stderr or proc.stdout).strip()[-300:]}; logs in {home / 'log'}")
        if Path(argv[0]).name == "munged":
            _wait(lambda: socket_path.exists(), timeout, "munged's socket")
    try:
        _wait(lambda: "idle" in cluster.command("sinfo", "-h", "-o", "%t", check=False).stdout, timeout, "the node idle")
    except SlurmUnavailable:
        cluster.stop()
        raise
    cluster.started_s = time.monotonic() - began
    return cluster


def _hold_lock(timeout: float):
    """The machine's test-cluster lock, waited for up to `timeout` seconds (another test's cluster)."""
    handle = open(LOCK, "a+")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise SlurmUnavailable(f"another test cluster held {LOCK} for {timeout:.0f} s") from None
            time.sleep(1)


def _pid(path: Path) -> int | None:
    """The live process whose id `path` holds, or None (no file, or the process is gone)."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
    return None if state == "Z" else pid


def _wait(ready, timeout: float, what: str, quiet: bool = False) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            if quiet:
                return
            raise SlurmUnavailable(f"SLURM did not come up: no {what} after {timeout:.0f} s")
        time.sleep(0.2)

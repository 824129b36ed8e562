"""How a job is kept apart from the service, from other users' jobs and from the machine.

A job runs the user's own ``model.py``: code, not data. Two layers keep it in its place, both at once where
the machine allows (defence in depth):

* **an account per job owner** (``users``, needs root): each hub user's jobs run under an unprivileged system
  account of their own, ``mlj-`` + 12 hex digits of the SHA-256 of the user name (no home, no login shell,
  no supplementary groups), created with ``useradd --system`` on first use and recorded in the service's
  ``accounts.json``. Only the user's job folders are chowned to it; the service's state (jobs table, logs,
  push tokens, bundles, the account table) stays root's, 0700/0600. JupyterHub's LocalProcessSpawner does
  the same for notebook servers.
* **a sandbox** (``bwrap``: bubblewrap): new PID and IPC namespaces with a fresh ``/proc`` (the service, its
  command line and environment, other jobs' processes: invisible, and so impossible to signal), the root
  file system read-only, an empty private ``/tmp`` and ``/dev/shm``, empty folders over the service's state,
  the inference service's store and the other hidden paths, an unreadable ``/dev/null`` (on a ``nodev``
  mount) over the tokens file, the data roots read-only, the job's own folder the only writable place. The
  network stays (inputs are read over root:// and http(s)://). Run as root, bubblewrap needs no user namespaces; ``setpriv`` then drops to the
  job's account before Python starts. Without root, bubblewrap builds the sandbox in an unprivileged user
  namespace and the job keeps the service's uid (and groups: run such a service under an account of its own).

Modes (setting ``isolation``): ``auto`` (``users+bwrap`` as root, ``bwrap`` otherwise, whichever works here),
``users+bwrap``, ``users``, ``bwrap``, ``none``. A mode is checked when the service starts, by running a
probe through the very sandbox jobs get (as ``nobody`` for the account modes): it must start Python, import
the package and list the data roots. When no isolation works, or ``none`` was asked for, the service refuses
jobs (503, with the reason) unless ``allow_unisolated`` is set.

Folders the job accounts cannot traverse (a Python installed under ``/root``, mode 0700) are replaced in the
sandbox by an empty folder through which the interpreter, the package and the data roots are bound again,
read-only: nothing else below them becomes visible.

Example::

    iso = resolve(settings)            # probed once per configuration
    iso.mode, iso.ready, iso.reason    # ('users+bwrap', True, '')
    argv, env, kwargs = iso.wrap([sys.executable, "-m", "mlaas4hep_lab.jobs.worker", str(job_dir)],
                                 job_dir, iso.account("alice"), env)
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlaas4hep_lab.errors import MLaaSError

__all__ = ["MODES", "Account", "Accounts", "Isolation", "IsolationError", "account_name", "resolve"]

MODES = ("auto", "users+bwrap", "users", "bwrap", "none")
ACCOUNT_PREFIX = "mlj-"
ACCOUNT_MARKER = "mlaas4hep-lab job account"   # the GECOS field of the accounts this service creates
PROBE_UID = 65534                               # nobody: the probe runs as an account that owns nothing
# the probe job: argv = its folder, then the data roots (paths as a job has them: absolute)
_PROBE = ("import os, sys\n"
          "import mlaas4hep_lab.jobs.worker\n"
          "for root in sys.argv[2:]:\n"
          "    os.listdir(root)\n"
          "with open(os.path.join(sys.argv[1], 'probe'), 'w') as f:\n"
          "    f.write('ok')\n")
_PROBED: dict[tuple, str] = {}   # probe results by configuration: a probe starts Python (about a second)
_PROBE_LOCK = threading.Lock()


class IsolationError(MLaaSError, OSError):
    """A job cannot be given its account or its sandbox."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def account_name(owner: str) -> str:
    """The system account of the jobs of hub user ``owner``: safe for ``useradd`` whatever the user name."""
    return ACCOUNT_PREFIX + hashlib.sha256(owner.encode("utf-8")).hexdigest()[:12]


class Accounts:
    """The account of each job owner, created on first use, recorded in ``path`` (JSON, 0600)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def get(self, owner: str) -> Account:
        name = account_name(owner)
        with self._lock:
            table = self._read()
            known = table.get(owner)
            entry = _getpwnam(name)
            if known is not None:
                if entry is None or entry.pw_uid != known["uid"]:
                    raise IsolationError(
                        f"the job account {name} of user {owner!r} was uid {known['uid']} and is now "
                        f"{'gone' if entry is None else entry.pw_uid}; an administrator should check it, then "
                        f"remove its entry from {self.path} so that the service creates it again")
                return Account(name, entry.pw_uid, entry.pw_gid)
            if entry is None:
                _useradd(name)
                entry = _getpwnam(name)
                if entry is None:
                    raise IsolationError(f"useradd said it created {name}, but the account cannot be found")
            elif entry.pw_gecos != ACCOUNT_MARKER:
                raise IsolationError(f"a system account {name} exists that this service did not create (its "
                                     f"comment is not {ACCOUNT_MARKER!r}); jobs of {owner!r} will not run under "
                                     "it: rename or remove that account")
            taken = {v["uid"] for v in table.values()}
            if entry.pw_uid in (0, os.geteuid()) or entry.pw_uid in taken:
                raise IsolationError(f"account {name} has uid {entry.pw_uid}, which is root's, the service's or "
                                     "another job owner's: refusing to run jobs under it")
            table[owner] = {"name": name, "uid": entry.pw_uid, "gid": entry.pw_gid}
            self._write(table)
            return Account(name, entry.pw_uid, entry.pw_gid)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise IsolationError(f"cannot read the table of job accounts {self.path}: {err}") from err
        return data if isinstance(data, dict) else {}

    def _write(self, table: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def _getpwnam(name: str):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _useradd(name: str) -> None:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    shell = shutil.which("nologin") or "/usr/sbin/nologin"
    cmd = [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", shell,
           "--user-group", "--comment", ACCOUNT_MARKER, name]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise IsolationError(f"cannot create the job account {name} with {useradd}: {err}") from err
    if done.returncode == 9:   # created meanwhile by another process: fine, it is read back
        return
    if done.returncode != 0:
        raise IsolationError(f"useradd could not create the job account {name} (status {done.returncode}): "
                             f"{(done.stderr or done.stdout).strip()[-500:]}")


@dataclass
class Isolation:
    """What the jobs of one service run under (see the module docstring); built by :func:`resolve`."""

    mode: str                      # in effect: "users+bwrap", "users", "bwrap" or "none"
    requested: str                 # the setting
    ready: bool                    # whether jobs may run (isolated, or unisolated and allowed)
    reason: str = ""               # why jobs are not isolated (empty when they are)
    bwrap: str | None = None
    setpriv: str | None = None
    hidden: tuple[Path, ...] = ()          # folders that look empty in the sandbox
    hidden_files: tuple[Path, ...] = ()    # files covered by /dev/null in the sandbox (EACCES: nodev mount)
    readable: tuple[Path, ...] = ()        # the data roots, bound read-only
    runtime: tuple[Path, ...] = ()         # the interpreter and the package, bound read-only where hidden
    tmp_size: int = 0                      # bytes of the private /tmp and /dev/shm; 0: the kernel's default
    accounts: Accounts | None = None
    blocked: tuple[Path, ...] = ()          # folders job accounts cannot pass: emptied (runtime, data roots re-bound)

    @property
    def users(self) -> bool:
        return self.mode in ("users", "users+bwrap")

    @property
    def sandboxed(self) -> bool:
        return self.mode in ("bwrap", "users+bwrap")

    def describe(self) -> str:
        """One line for the service's start-up message."""
        if self.mode != "none":
            what = {"users+bwrap": "a system account per user, in a bubblewrap sandbox",
                    "users": "a system account per user (no sandbox)",
                    "bwrap": "a bubblewrap sandbox, under the service's own uid"}[self.mode]
            return f"isolation {self.mode}: jobs run under {what}"
        if self.ready:
            return f"isolation none: jobs run as the service itself ({self.reason}; allowed by --allow-unisolated)"
        return f"isolation none: jobs are refused ({self.reason})"

    def refusal(self) -> str:
        """Why jobs are refused, and what the operator can do: the 503 answer of a submission."""
        return (f"this service cannot isolate training jobs from itself and from other users' jobs, so it runs "
                f"none: {self.reason}. Its operator can install bubblewrap and run it as root (isolation "
                "users+bwrap) or, not as root, with unprivileged user namespaces allowed (isolation bwrap); or "
                "allow jobs without isolation with --allow-unisolated (MLAAS4HEP_JOBS_ALLOW_UNISOLATED=1)")

    def account(self, owner: str) -> Account | None:
        """The system account of ``owner``'s jobs (created on first use); None without the users layer."""
        if not self.users or self.accounts is None:
            return None
        return self.accounts.get(owner)

    def wrap(self, argv: list[str], job_dir: Path, account: Account | None,
             env: dict[str, str]) -> tuple[list[str], dict[str, str], dict[str, Any]]:
        """``(argv, env, Popen keywords)`` that run ``argv`` for a job in ``job_dir`` under this isolation."""
        env = dict(env)
        if self.mode == "none":
            return list(argv), env, {}
        kwargs: dict[str, Any] = {"umask": 0o077}
        if self.users:
            if account is None:
                raise IsolationError("a job needs its account under isolation " + self.mode)
            env.update(USER=account.name, LOGNAME=account.name)
        if self.sandboxed:
            # HOME and TMPDIR in the private /tmp: caches of the ML libraries go there, not to the service's HOME
            env.update(HOME="/tmp", TMPDIR="/tmp")
            inner = list(argv)
            if self.users:
                inner = [str(self.setpriv), f"--reuid={account.uid}", f"--regid={account.gid}", "--clear-groups",
                         "--no-new-privs", "--inh-caps=-all", "--", *inner]
            return [str(self.bwrap), *self.sandbox_args(job_dir), "--", *inner], env, kwargs
        env.update(HOME=str(job_dir))   # no sandbox: the job's folder is the only place it may write to
        env.pop("TMPDIR", None)
        kwargs.update(user=account.uid, group=account.gid, extra_groups=[])
        return list(argv), env, kwargs

    def sandbox_args(self, job_dir: Path | None) -> list[str]:
        """bubblewrap's arguments for a job in ``job_dir`` (without it: the same sandbox with no job folder).

        Mounts are ordered by depth, so a deeper one wins: a data root inside a hidden folder stays readable,
        a hidden folder inside a data root stays hidden, the job folder inside the hidden state is there."""
        size = ["--size", str(self.tmp_size)] if self.tmp_size else []
        ops: list[tuple[Path, int, str, list[str]]] = [
            (Path("/tmp"), 0, "tmpfs", ["--perms", "1777", *size, "--tmpfs", "/tmp"]),
            (Path("/dev/shm"), 0, "tmpfs", ["--perms", "1777", *size, "--tmpfs", "/dev/shm"]),
        ]
        ops += [(p, 0, "tmpfs", ["--tmpfs", str(p)]) for p in self.blocked]
        ops += [(p, 1, "bind", ["--ro-bind", str(p), str(p)]) for p in (*self.readable, *self._exposed_runtime())]
        ops += [(p, 2, "tmpfs", ["--tmpfs", str(p)]) for p in self.hidden]
        ops += [(p, 2, "bind", ["--ro-bind", "/dev/null", str(p)]) for p in self.hidden_files]
        ops.sort(key=lambda op: (len(op[0].parts), op[1]))
        if job_dir is not None:
            ops.append((Path(job_dir), 3, "bind", ["--bind", str(job_dir), str(job_dir)]))
        args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        mounts: dict[Path, str] = {}
        for path, _, kind, op in ops:
            # a mount point bubblewrap makes on a tmpfs gets its parents with mode 0700: the job's account
            # could not pass them, so they are made first, 0755
            parent = max((m for m in mounts if m != path and _below(path, m)), key=lambda m: len(m.parts),
                         default=None)
            if parent is not None and mounts[parent] != "bind":
                for folder in reversed(path.parents):
                    if folder != parent and _below(folder, parent) and folder not in mounts:
                        args += ["--perms", "0755", "--dir", str(folder)]
                        mounts[folder] = "dir"
            args += op
            mounts[path] = kind
        if job_dir is not None:
            args += ["--chdir", str(job_dir)]
        # no --new-session and no --die-with-parent: the service signals the job's process group, and a job
        # outlives a restart of the service
        return [*args, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]

    def _exposed_runtime(self) -> list[Path]:
        covers = (*self.blocked, *self.hidden, Path("/tmp"))
        return [p for p in self.runtime if any(_below(p, c) for c in covers)]

    def probe(self, scratch: Path) -> str:
        """Run the probe through this isolation; '' when it worked, else why not."""
        key = (self.mode, self.bwrap, self.setpriv, self.readable, self.runtime, self.blocked, sys.executable)
        with _PROBE_LOCK:
            if key not in _PROBED:
                _PROBED[key] = self._probe(scratch)
            return _PROBED[key]

    def _probe(self, scratch: Path) -> str:
        scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.users and not self.sandboxed:   # as the service will: job accounts pass through, not list
            os.chmod(scratch, 0o711)
        folder = scratch / f"probe-{secrets.token_hex(6)}"
        folder.mkdir(mode=0o700)
        account = Account("nobody", PROBE_UID, PROBE_UID) if self.users else None
        try:
            if account is not None:
                os.chown(folder, account.uid, account.gid)
            env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "PYTHONPATH", "LD_LIBRARY_PATH")}
            argv, env, kwargs = self.wrap([sys.executable, "-c", _PROBE, str(folder), *map(str, self.readable)],
                                          folder, account, env)
            try:
                done = subprocess.run(argv, env=env, cwd=str(folder), capture_output=True, text=True, timeout=120,
                                      stdin=subprocess.DEVNULL, **kwargs)
            except (OSError, subprocess.SubprocessError) as err:
                return f"{self.mode}: the probe could not start ({err})"
            if done.returncode != 0:
                tail = " | ".join(line.strip() for line in (done.stderr or done.stdout).strip().splitlines()[-3:])
                who = "an unprivileged account" if self.users else "the service's uid"
                return (f"{self.mode}: a probe job (Python importing the package and listing the data roots, as "
                        f"{who}) failed with status {done.returncode}: {tail}")
            made = folder / "probe"
            if not made.is_file() or (account is not None and made.stat().st_uid != account.uid):
                return f"{self.mode}: the probe job could not write its folder as its own account"
            return ""
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _below(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _blocked_above(paths, traversable) -> tuple[Path, ...]:
    """The outermost folders above ``paths`` that the job cannot traverse (``traversable`` says)."""
    out: list[Path] = []
    for path in paths:
        for folder in reversed(path.parents):   # from / down
            if folder == Path("/"):
                continue
            try:
                if not traversable(folder):
                    if not any(_below(folder, b) for b in out):
                        out = [b for b in out if not _below(b, folder)] + [folder]
                    break
            except OSError:
                break
    return tuple(out)


def _runtime_paths() -> tuple[Path, ...]:
    """What a worker needs to start: the interpreter, the standard library, site-packages, the package."""
    import mlaas4hep_lab

    here = {os.path.realpath(p) for p in ("", os.getcwd())}
    found = {Path(os.path.realpath(p)) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    found.add(Path(os.path.realpath(sys.executable)).parent)
    found.add(Path(mlaas4hep_lab.__file__).resolve().parent.parent)
    for entry in sys.path:   # the current folder is not one: it is where the service was started from
        if entry and os.path.realpath(entry) not in here and os.path.isdir(entry):
            found.add(Path(os.path.realpath(entry)))
    # keep the outermost: a folder inside another one comes with it
    return tuple(sorted(p for p in found if not any(q != p and _below(p, q) for q in found)))


def _others_can_traverse(folder: Path) -> bool:
    return bool(folder.stat().st_mode & 0o001)


def _hidden_paths(settings) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """(folders, files) a job must not see: the service's state, its tokens file, the inference store, the
    operator's ``hide_paths``, the service's HOME when jobs share its uid."""
    candidates = [settings.state_dir, *getattr(settings, "hide_paths", ())]
    if getattr(settings, "tokens_file", None):
        candidates.append(Path(settings.tokens_file))
    store = os.environ.get("MLAAS4HEP_STORE")
    if store:
        candidates.append(Path(store))
    # the state folder always (it may not exist yet); the others when they exist: bubblewrap cannot make a
    # mount point on the read-only root
    folders, files = [Path(os.path.realpath(settings.state_dir))], []
    for path in candidates[1:]:
        path = Path(os.path.realpath(Path(path).expanduser()))
        if path == Path("/"):
            continue
        if path.is_dir():
            folders.append(path)
        elif path.exists():
            files.append(path)
    return tuple(dict.fromkeys(folders)), tuple(dict.fromkeys(files))


def resolve(settings) -> Isolation:
    """The isolation the jobs of ``settings`` get: the requested mode if it works here, else none (with the
    reason; jobs then run only when ``allow_unisolated`` is set)."""
    requested = settings.isolation
    allow = bool(settings.allow_unisolated)
    if requested == "none":
        return Isolation("none", requested, allow, "isolation is switched off (isolation='none')")
    root = os.geteuid() == 0
    mode = requested if requested != "auto" else ("users+bwrap" if root else "bwrap")
    bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
    missing = []
    if "users" in mode and not root:
        missing.append(f"isolation {mode} needs the service to run as root (it runs as uid {os.geteuid()})")
    if "users" in mode and not (shutil.which("useradd") or os.path.exists("/usr/sbin/useradd")):
        missing.append("useradd is not installed")
    if "bwrap" in mode and bwrap is None:
        missing.append("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
    if mode == "users+bwrap" and setpriv is None:
        missing.append("setpriv (util-linux) is not installed")
    if missing:
        return Isolation("none", requested, allow, "; ".join(missing))
    folders, files = _hidden_paths(settings)
    runtime = _runtime_paths()
    readable = tuple(Path(os.path.realpath(p)) for p in settings.data_roots)
    iso = Isolation(mode, requested, True, bwrap=bwrap, setpriv=setpriv, readable=readable, runtime=runtime,
                    tmp_size=int(settings.memory_limit or 0))
    if mode == "bwrap":
        # jobs share the service's uid: its HOME (keys, credentials, caches) must not be there, except the
        # interpreter or the package if they live in it
        home = Path(os.path.realpath(Path.home()))
        if home != Path("/") and home.is_dir():
            folders = (*folders, home)
    iso.hidden, iso.hidden_files = folders, files
    if iso.users:
        iso.accounts = Accounts(settings.state_dir / "accounts.json")
        # folders the job accounts cannot pass through (Python under /root): emptied, the needed paths re-bound
        iso.blocked = _blocked_above((*runtime, *readable), _others_can_traverse) if iso.sandboxed else ()
    why = iso.probe(settings.state_dir)
    if why:
        return Isolation("none", requested, allow, why)
    return iso

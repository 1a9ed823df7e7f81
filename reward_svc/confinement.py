"""What a plug-in process may do once its function is loaded, enforced by an audit hook.

It may read files under its own folder and Python's installation (for lazy
imports), and nothing else; it may not write, delete or rename files, open a
database file, change its working directory, use `..` in a path, start
processes or load native libraries. Hatchery's own settings ($HATCHERY_*:
tokens, certificate paths) are removed from its environment before its module
is imported. A refused action raises PermissionError in the plug-in, so the
sample it was scoring is reported FAILED with the reason.

An audit hook stops a grader that misbehaves by accident or naively; it is not
a sandbox against code written to escape (native code can bypass it). Where the
kernel offers them, the same rules are also enforced by the kernel, which native
code cannot bypass: Landlock for files (landlock.py), seccomp for processes
(seccomp.py). Run a grader you do not
trust as its own reward service, in its own container.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reward_svc.landlock import restrict_to_reading
from reward_svc.seccomp import forbid_new_processes

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PROCESS_EVENTS = ("os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.kill",
                   "subprocess.Popen", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym")
_FILE_CHANGE_EVENTS = ("os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.link",
                       "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move")
_PATH_READ_EVENTS = ("os.listdir", "os.scandir", "glob.glob")
# A relative path is checked against the working directory; an open with dir_fd resolves it
# against another directory, which the audit event does not show: so the working directory
# stays put and no path may climb out with "..".
_CWD_EVENTS = ("os.chdir", "os.fchdir")


def _is_write(mode: Any, flags: Any) -> bool:
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


class Confinement:
    def __init__(self, readable: Iterable[str | os.PathLike]):
        self.roots = tuple(os.path.realpath(r) for r in readable)

    def readable(self, path: Any) -> bool:
        if isinstance(path, int):  # an open file descriptor: already allowed
            return True
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        real = os.path.realpath(path)
        return any(real == root or real.startswith(root + os.sep) for root in self.roots)

    def __call__(self, event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if _is_write(mode, flags):
                raise PermissionError(f"a reward plug-in may not write files ({path})")
            if not self.readable(path) or _climbs(path):
                raise PermissionError(f"a reward plug-in may not read {path}: outside its folder")
        elif event == "sqlite3.connect":
            if args and args[0] not in (":memory:", b":memory:", ""):
                raise PermissionError(f"a reward plug-in may not open a database file ({args[0]}); use ':memory:'")
        elif event in _CWD_EVENTS:
            raise PermissionError("a reward plug-in may not change its working directory")
        elif event in _PATH_READ_EVENTS:
            if args and args[0] is not None and not self.readable(args[0]):
                raise PermissionError(f"a reward plug-in may not list {args[0]}: outside its folder")
        elif event.startswith(_PROCESS_EVENTS):
            raise PermissionError(f"a reward plug-in may not {event.split('.')[-1]} (no processes, no native code)")
        elif event.startswith(_FILE_CHANGE_EVENTS):
            raise PermissionError(f"a reward plug-in may not change files ({event})")


def _climbs(path: Any) -> bool:
    if isinstance(path, int):
        return False
    return ".." in Path(os.fsdecode(path)).parts


def scrub_environment() -> None:
    """Removes Hatchery's own settings (bearer tokens, TLS paths) from this process's environment."""
    for name in [n for n in os.environ if n.startswith("HATCHERY_")]:
        del os.environ[name]


def _readable(plugin_folder: str | os.PathLike) -> list[str | os.PathLike]:
    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    here = Path(__file__).resolve().parent.parent  # Hatchery itself, for a source checkout
    return [plugin_folder, *python, here, "/dev/null", "/dev/urandom"]


def confine_by_kernel(plugin_folder: str | os.PathLike) -> tuple[str, ...]:
    """From now on the kernel lets this process (and any child) read only its plug-in's folder
    and Python's files (Landlock) and start no process (seccomp), where it offers them; returns
    the layers in force. Safe before the plug-in's module is imported: imports only read."""
    libraries = ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache"]  # for imports
    return (("landlock",) if restrict_to_reading([*_readable(plugin_folder), *libraries]) else ()) + \
        (("seccomp",) if forbid_new_processes() else ())


def confine_by_hook(plugin_folder: str | os.PathLike) -> None:
    """From now on an audit hook refuses what the module docstring lists; after the module is
    imported (the hook refuses the native loads an import may need) and after the kernel layers
    (it refuses the ctypes calls they make)."""
    sys.addaudithook(Confinement(_readable(plugin_folder)))

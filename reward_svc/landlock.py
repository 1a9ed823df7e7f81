"""Kernel confinement of a plug-in process with Landlock (Linux 5.13 and later).

Where the kernel offers it, a confined plug-in process is restricted by the kernel itself
to reading files beneath a few folders (its own, Python's), with no writes, no file
creation or removal and no execution of any program, whatever code it runs: native code
and a tampered audit hook included. The restriction is inherited by any process it forks.
Where the kernel does not offer it, `restrict_to_reading` returns False and the audit hook
(confinement.py) remains the only layer.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterable

# Syscall numbers: the same on x86_64 and aarch64 (both use the generic numbers for these).
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_PR_SET_NO_NEW_PRIVS = 38
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

# Filesystem access rights (linux/landlock.h), and the ABI that introduced the newer ones.
_READ_FILE, _READ_DIR = 1 << 2, 1 << 3
_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def abi_version() -> int:
    """The kernel's Landlock ABI, 0 where there is none (another OS, an old kernel, disabled)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        return 0
    version = _libc().syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(version, 0)


def restrict_to_reading(folders: Iterable[str | os.PathLike]) -> bool:
    """From now on this process (and its children) may only read beneath `folders`; True when
    the kernel enforces it, False where Landlock is unavailable. Folders that do not exist are skipped."""
    abi = abi_version()
    if not abi:
        return False
    handled = _RIGHTS_BY_ABI[max(v for v in _RIGHTS_BY_ABI if v <= abi)]
    libc = _libc()
    attr = _RulesetAttr(handled)
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for folder in folders:
            try:
                fd = os.open(folder, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                is_dir = os.path.isdir(folder)
                rule = _PathBeneathAttr(_READ_FILE | (_READ_DIR if is_dir else 0), fd)
                if libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule {folder}: "
                                                      f"{os.strerror(ctypes.get_errno())}")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) < 0:
            raise OSError(ctypes.get_errno(), f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return True

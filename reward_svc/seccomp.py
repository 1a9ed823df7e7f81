"""No new processes for a plug-in, by a seccomp filter (Linux, x86_64 and aarch64).

fork, vfork, execve, execveat and a clone that is not a thread's fail with EPERM; clone3,
whose flags a filter cannot read, fails with ENOSYS so that threads are made with clone
instead (glibc falls back to it). Threads stay possible: numeric libraries start them.
The filter holds for native code as well, and cannot be lifted by the process. Syscalls of
another ABI (32-bit calls on x86_64) are refused outright.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_CLONE_THREAD = 0x00010000
# BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h)
_LD_W_ABS, _JEQ_K, _JSET_K, _RET_K = 0x20, 0x15, 0x45, 0x06
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000

# Per architecture: the audit arch, and the syscall numbers that make a process or run a program.
_ARCHES = {
    "x86_64": (0xC000003E, {"fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "clone": 56, "clone3": 435}),
    "aarch64": (0xC00000B7, {"execve": 221, "execveat": 281, "clone": 220, "clone3": 435}),
}


def _program(arch: int, numbers: dict[str, int]) -> list[tuple[int, int, int, int]]:
    refused = [numbers[n] for n in ("fork", "vfork", "execve", "execveat") if n in numbers]
    deny, enosys = (_RET_K, 0, 0, _ERRNO | errno.EPERM), (_RET_K, 0, 0, _ERRNO | errno.ENOSYS)
    allow = (_RET_K, 0, 0, _ALLOW)
    # A syscall of another ABI (32-bit calls on x86_64) is refused outright: it would dodge the numbers.
    body: list[tuple[int, int, int, int]] = [(_LD_W_ABS, 0, 0, 4), (_JEQ_K, 1, 0, arch), deny, (_LD_W_ABS, 0, 0, 0)]
    # After the checks below come, in order: allow, deny, enosys, and the clone check.
    checks = [(n, "deny") for n in refused] + [(numbers["clone3"], "enosys"), (numbers["clone"], "clone")]
    tail = {"allow": 0, "deny": 1, "enosys": 2, "clone": 3}
    for i, (number, target) in enumerate(checks):
        remaining = len(checks) - i - 1  # checks after this one, then the tail
        body.append((_JEQ_K, remaining + tail[target], 0, number))
    body += [allow, deny, enosys, (_LD_W_ABS, 0, 0, 16), (_JSET_K, 0, 1, _CLONE_THREAD), allow, deny]
    return body


def forbid_new_processes() -> bool:
    """Installs the filter on this process (and any thread it starts); False where unsupported."""
    arch = _ARCHES.get(platform.machine()) if platform.system() == "Linux" else None
    if arch is None:
        return False
    program = _program(*arch)
    filters = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(filters)
    fprog = struct.pack("HxxxxxxP", len(program), ctypes.addressof(buffer))  # struct sock_fprog
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0) == 0

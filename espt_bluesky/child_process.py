"""Child processes that die with the process that started them (servers, IOCs): no orphan holds a port.

On Linux, :func:`dying_with_parent` wraps a command line in a tiny Python launcher that asks the kernel
(``prctl(PR_SET_PDEATHSIG)``) to signal the program when its parent dies -- even by SIGKILL -- and then ``exec``\\ s
the program (same pid).  Elsewhere the command is returned unchanged.

This replaces ``preexec_fn`` (unsafe in a process that runs threads: the child can deadlock before ``exec``).
The kernel ties the signal to the *thread* that started the child: start long-lived children from a thread that
lives as long as they should (the main thread, as ``espt serve`` and the tests do).

Imports nothing from the package (every layer may use it).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Sequence

_LAUNCHER = """\
import ctypes, os, sys
parent, sig = int(sys.argv[1]), int(sys.argv[2])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != parent:  # the parent died before the request took effect
    sys.exit(128 + sig)
os.execvp(sys.argv[3], sys.argv[3:])
"""


def dying_with_parent(argv: Sequence[str], sig: int = signal.SIGTERM) -> list[str]:
    """``argv`` run so that it receives ``sig`` when this process dies (Linux; unchanged elsewhere).

    Parameters
    ----------
    argv : sequence of str
        The command (``argv[0]`` a path or a name on ``PATH``).
    sig : int
        The signal sent (default SIGTERM: servers shut down cleanly and free their ports).
    """
    argv = [str(a) for a in argv]
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), str(int(sig)), *argv]


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie we could reap)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


__all__ = ["dying_with_parent", "pid_alive"]

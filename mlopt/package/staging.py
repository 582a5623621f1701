"""Hidden working folders next to OUT, named after the process that owns them, and the removal of stale ones.

A package is built in `.OUT-<hash>.mlopt-tmp-<owner>-<random>` beside OUT and renamed into place when complete; a
package that `--force` replaces may sit briefly in `.OUT-<hash>.mlopt-old-<owner>-<random>` (`<hash>` identifies the
whole name of OUT, of which only the first bytes are spelled out). `<owner>` is a hash of the host name,
the pid and the process's start time (Linux: /proc/<pid>/stat), so a later run can prove the owner dead -
same host, and the pid gone or now a different process - and only then remove what it left (after SIGKILL,
a power loss, or a kill from a CI timeout). A folder whose owner may be alive, or lives on another host (a shared
file system), is never touched. A stale `-old-` package is put back as OUT if OUT is missing (the run died
between its two renames), else removed: replacing it was what that run was asked to do.
"""

import hashlib
import os
import re
import secrets
import shutil
import socket
import sys

TMP, OLD = ".mlopt-tmp-", ".mlopt-old-"
_NAME_BYTES = 60  # of OUT's name (UTF-8), in the staging name: far below NAME_MAX (255 bytes) for any OUT
_OWNER = re.compile(r"^([0-9a-f]{8})-(\d+)-(\d+)-[0-9a-f]+$")


def _host():
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def start_time(pid):
    """The process's start time in clock ticks since boot (Linux), 0 where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def prefix(out_name, kind):
    """`.<start of OUT's name>-<hash of the whole name><kind>`: readable, at most ~100 bytes, and unique to OUT
    (two long names sharing their first bytes never share working folders)."""
    start = out_name.encode(errors="surrogateescape")[:_NAME_BYTES].decode(errors="ignore")
    digest = hashlib.sha256(out_name.encode(errors="surrogateescape")).hexdigest()[:12]
    return f".{start}-{digest}{kind}"


def new_name(out_name, kind):
    """A fresh hidden name beside OUT, for this process."""
    pid = os.getpid()
    return f"{prefix(out_name, kind)}{_host()}-{pid}-{start_time(pid)}-{secrets.token_hex(4)}"


def owner_is_gone(name, kind, out_name):
    """True only if `name` is a working folder of `kind` for OUT whose owner is provably dead."""
    head = prefix(out_name, kind)
    match = _OWNER.match(name[len(head):]) if name.startswith(head) else None
    if match is None:
        return False
    host, pid, started = match.group(1), int(match.group(2)), int(match.group(3))
    if host != _host():
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return bool(started) and sys.platform.startswith("linux") and start_time(pid) not in (0, started)


def remove_tree(dir_fd, parent, name):
    """Remove folder `name` of `dir_fd` (at path `parent`) without following links inside it."""
    if sys.version_info >= (3, 11):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:  # rmtree's fd-based walk on a path: it does not follow links either
        shutil.rmtree(os.path.join(parent, name))


def remove_stale(dir_fd, parent, out_name):
    """Clean up what dead mlopt runs left for OUT in `parent`; return one line per folder dealt with."""
    done = []
    for name in sorted(os.listdir(dir_fd)):
        for kind in (TMP, OLD):
            if not owner_is_gone(name, kind, out_name):
                continue
            path = os.path.join(parent, name)
            if kind == OLD and not os.path.lexists(os.path.join(parent, out_name)):
                os.rename(name, out_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                done.append(f"restored {os.path.join(parent, out_name)} from {path}, left by a run that died while replacing it")
            else:
                remove_tree(dir_fd, parent, name)
                done.append(f"removed {path}, left by an mlopt run that is gone")
    return done

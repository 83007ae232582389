"""Is a SQLite store on a network filesystem? Then shards on several hosts must not share it.

SQLite's WAL keeps its lock state in shared memory beside the file, which only processes of one
host share, and the POSIX locks SQLite falls back on are unreliable over NFS, SMB and the
parallel filesystems of clusters: shards on several machines writing one `results.db` there can
lose or corrupt results (see https://www.sqlite.org/wal.html and sqlite.org/lockingv3.html). So
`secateurs sweep --shard`, and a backend whose runs may leave this machine (Slurm, a Ray cluster at an
address: `SweepBackend.spans_hosts`), refuse such a store and say what to do instead; the processes of
one host on it (workers, a local Ray instance, submitit's local executor) are only warned about.

The filesystem type comes from /proc/self/mounts (Linux): the mount whose point is the longest
prefix of the path. `MOUNTS` is read at call time, so a test can point it at a file of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from secateurs.core.errors import ConfigError

log = logging.getLogger(__name__)

MOUNTS = Path("/proc/self/mounts")
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "coda", "9p", "lustre", "gpfs",
    "ceph", "cephfs", "glusterfs", "beegfs", "orangefs", "pvfs2", "panfs", "wekafs", "ocfs2",
    "gfs2", "davfs", "fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "fuse.cephfs", "fuse.s3fs",
    "fuse.gcsfuse", "fuse.juicefs", "fuse.rclone", "fuse.beegfs",
})  # fmt: skip
"""Filesystems whose files processes on other hosts can open at the same time."""


def _unescape(field: str) -> str:
    """/proc/mounts writes a space, tab, newline and backslash in a path as octal (`\\040`)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def filesystem_type(path: str | os.PathLike[str], mounts: str | None = None) -> str | None:
    """The type of the filesystem holding `path` (which need not exist yet), from the text of
    /proc/self/mounts (`mounts`, read from `MOUNTS` by default); None where that is unknown."""
    if mounts is None:
        try:
            mounts = MOUNTS.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    target = Path(os.path.abspath(path))
    with contextlib.suppress(OSError, RuntimeError):
        target = target.resolve()  # symlinks to another mount; a missing tail resolves lexically
    best: tuple[int, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(_unescape(fields[1]))
        if target == point or point in target.parents:
            depth = len(point.parts)
            if best is None or depth >= best[0]:  # later mounts over the same point win
                best = (depth, fields[2])
    return None if best is None else best[1]


def network_filesystem(path: str | os.PathLike[str], mounts: str | None = None) -> str | None:
    """The network filesystem type holding `path`, None when it is local (or unknown)."""
    kind = filesystem_type(path, mounts)
    return kind if kind is not None and kind.lower() in NETWORK_FILESYSTEMS else None


def check_sqlite_store(db_path: str | os.PathLike[str], *, shared_by_hosts: bool) -> None:
    """Refuse a SQLite store on a network filesystem for shards on several hosts (`shared_by_hosts`);
    warn about one for the processes of one host, where it works but is slow and fragile."""
    kind = network_filesystem(db_path)
    if kind is None:
        return
    if shared_by_hosts:
        raise ConfigError(
            f"{db_path} is on a network filesystem ({kind}), where SQLite's locks do not hold "
            "between hosts: shards on several machines sharing it can lose or corrupt results",
            fix="use a server store (--store postgresql://USER@HOST/DB, --root stays for the run "
            "directories), or give each host a --root on a local disk and combine them afterwards with "
            "`secateurs merge OUT ROOT...`",
        )
    log.warning(
        "%s is on a network filesystem (%s): fine for this host's processes alone, but never run"
        " shards of other hosts on it (use --store postgresql://... or per-host roots and"
        " `secateurs merge`)",
        db_path,
        kind,
    )

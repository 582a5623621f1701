"""Write the optimized package: every file copied byte for byte except the root model, written from the new spec,
and the weight files that receive a rewrite's new blobs, rewritten by package/weight_writer.py - over the copy
this run made, in place (only from the first blob that moves on), or anew where the staged file is the input's
own (a `--link` hard link: never written through).

`PackageWriter` checks OUT (destination.py), then starts copying at once, in a background thread, into a hidden
staging folder it creates next to OUT (staging.py); the caller analyses and rewrites the spec meanwhile (the copy
is kernel work and does not hold the GIL), then `commit`s the model file. Everything is written through file
descriptors of folders this run created, into files it created with O_EXCL: nothing is written through a path
that existed before. Files and folders are fsync'ed, then the staging folder takes OUT's name in one atomic step
that fails if OUT appeared meanwhile (claim.py), or swaps with the package `--force` replaces. An error, Ctrl-C or
SIGTERM removes the staging folder and the parent folders this run created: nothing partial is ever left.
"""

import os
import signal
import stat
import threading
from contextlib import contextmanager

from ..errors import BadInputError
from ..pause_points import pause
from . import claim, destination, staging
from .copy import Cancelled, copy_into, create_file
from .tree import FILE

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


_LIVE = set()  # writers whose staging folder or created parents may still exist
COMMITS = [0]  # packages this process has put in place: a signal after a commit interrupts nothing of it
_DEFERRED = {signal.SIGINT, signal.SIGTERM} | ({signal.SIGHUP} if hasattr(signal, "SIGHUP") else set())
_HOLDING = [0]  # depth of signals_deferred() blocks
HELD = []  # signals a handler held inside such a block, sent again to the main thread when it ends


def holding_signals():
    """True inside signals_deferred(): a Python signal handler must record its signal in HELD and return."""
    return _HOLDING[0] > 0


@contextmanager
def signals_deferred():
    """Signals arriving inside are delivered when it ends: for the few steps an exception must not split
    (starting the copy thread; renaming into place and recording it). Blocking them in this thread is not enough:
    another thread (numpy's BLAS threads) may take a signal sent to the process, and Python then runs the handler
    in this thread all the same. So handlers also ask `holding_signals()` (mlopt/signals.py does) and leave theirs
    in HELD, sent again to this thread as the block ends."""
    blocking = hasattr(signal, "pthread_sigmask")
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED) if blocking else None
    _HOLDING[0] += 1
    try:
        yield
    finally:
        _HOLDING[0] -= 1
        if blocking:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        while HELD and not _HOLDING[0]:
            signal.pthread_kill(threading.main_thread().ident, HELD.pop(0))


def abort_all():
    """Clean up after every writer still live: the safety net for an interrupt that lands between two
    statements (after a writer is built, before its `with` block is entered)."""
    for writer in list(_LIVE):
        writer.abort()


class PackageWriter:
    """with PackageWriter(package, out) as writer: ...; writer.commit(spec) - copy first, model file last."""

    def __init__(self, package, out_path, force=False, link=False):
        self.package = package
        self.link = link
        self.methods = set()  # copy methods used, e.g. {"copy_file_range"}
        self.notes = []  # what the report should say (stale folders removed)
        self._error = None
        self._cancel = threading.Event()
        self._folders = {}  # staging-relative folder -> fd
        self._private = {}  # staging-relative file -> (st_dev, st_ino) of the copy this run made (never a hard link)
        self._thread = None
        self.staging = None  # the staging folder's name in OUT's parent, while it exists
        self.dest = destination.Destination.of(out_path)
        _LIVE.add(self)  # from here on, abort_all() can clean up whatever this writer has made
        try:
            destination.prepare(self.dest, package, force)
        except BaseException:
            self._cleanup()
            raise
        self.notes += self.dest.notes
        try:
            self.staging = staging.new_name(self.dest.name, staging.TMP)
            os.mkdir(self.staging, 0o700, dir_fd=self.dest.dir_fd)
            self._folders[""] = os.open(self.staging, _DIR_FLAGS, dir_fd=self.dest.dir_fd)
            with signals_deferred():  # a thread interrupted while starting could neither be joined nor trusted
                self._thread = threading.Thread(target=self._copy_all, name="mlopt-copy", daemon=True)
                self._thread.start()
                pause("copy-start")
        except OSError as e:
            self.abort()
            raise self._write_error(e) from None
        except BaseException:  # a signal held while the copy started is raised here, the copy running: stop it first
            self.abort()
            raise

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is not None:
            self.abort()
        return False

    # -- copying (background thread) ------------------------------------------------------------------------
    def _copy_all(self):
        try:
            for entry in self.package.entries:
                if self._cancel.is_set():
                    return
                if entry.rel == self.package.model_rel:
                    continue
                if entry.kind == FILE:
                    self.methods.add(self._copy(entry.rel))
                    pause("copy", cancelled=self._cancel.is_set)
                else:
                    self._make_folder(entry.rel)
        except Cancelled:
            pass
        except BaseException as e:  # handed to commit()
            self._error = e

    def _make_folder(self, rel):
        parent, _, name = rel.rpartition("/")
        try:
            os.mkdir(name, 0o777, dir_fd=self._folders[parent])
            self._folders[rel] = os.open(name, _DIR_FLAGS, dir_fd=self._folders[parent])
        except OSError as e:
            raise self._write_error(e) from None

    def _copy(self, rel):
        parent, _, name = rel.rpartition("/")
        source = self.package.tree.open_file(rel)
        link_from = None
        try:
            if self.link:
                link_from = self.package.tree.location(rel)  # a hub cache link: its blob
            made = []
            try:
                method = copy_into(source, self._folders[parent], name, link_from=link_from, cancelled=self._cancel.is_set, made=made)
                if made:
                    self._private[rel] = made[0]
                return method
            except (Cancelled, BadInputError):
                raise
            except OSError as e:
                raise self._write_error(e) from None
        finally:
            os.close(source)
            if link_from is not None:
                os.close(link_from[0])

    # -- finishing ------------------------------------------------------------------------------------------
    def commit(self, spec, new_blobs=None):
        """Wait for the copy, write the weight files that receive new blobs anew (`new_blobs`, a NewBlobs of
        package/weight_writer.py, which remaps the program's offsets), then the model file (`spec`, or the
        input's bytes if None), and move into place."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        try:
            if new_blobs is not None and spec is not None:
                self._write_weights(spec, new_blobs)
            self._write_model(spec)
            for fd in self._folders.values():  # every folder's entries on disk before the rename
                os.fsync(fd)
            os.fchmod(self._folders[""], 0o777 & ~_umask())  # a normal folder's mode; staging starts 0700
            replaced = None
            try:
                with signals_deferred():  # in place and recorded as such, or neither
                    pause("rename")
                    replaced = self._put_in_place()
                    COMMITS[0] += 1
                    _LIVE.discard(self)
                pause("after-rename")
                os.fsync(self.dest.dir_fd)
            finally:  # also when a signal held by the rename, or one just after it, ends the run: the package
                # --force replaced is not left behind (hidden, as large as the model) for a next run to find
                if replaced is not None:
                    self._remove_replaced(replaced)
        except OSError as e:
            raise self._write_error(e) from None
        finally:
            if self.staging is None:
                self._close_folders()
                self.dest.close()
        return self.methods

    def _write_weights(self, spec, new_blobs):
        """Each weight file the program refers to a new blob in, rewritten. A copy this run made (`_open_private`)
        is updated in place: the blobs that keep their offsets (all before the first dropped one) are not written
        again, and a 2 GB file whose last blob (an LM head) was split costs the rows after the head's first chunk.
        Any other file (a `--link` hard link to the input's) is unlinked and created anew: never written through."""
        for file_name in new_blobs.files_to_write(spec):
            rel = new_blobs.reader.relpath(file_name)
            parent, _, name = rel.rpartition("/")
            fd = self._open_private(rel)
            in_place = fd is not None
            if not in_place:
                os.unlink(name, dir_fd=self._folders[parent])
                fd = create_file(self._folders[parent], name)
            try:
                self.methods.update(new_blobs.write(spec, file_name, fd, in_place=in_place))
                pause("weights")
                os.fsync(fd)
            finally:
                os.close(fd)

    def _open_private(self, rel):
        """A read-write descriptor of `rel` if it is the private copy this run's copy made - the same inode the
        copy wrote (no link followed), a regular file with no other name (st_nlink 1: not the input's, which a
        `--link` run shares) - else None."""
        made = self._private.get(rel)
        if made is None:
            return None
        parent, _, name = rel.rpartition("/")
        try:
            fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=self._folders[parent])
        except OSError:
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != made or st.st_nlink != 1:
            os.close(fd)
            return None
        return fd

    def _write_model(self, spec):
        parent, _, name = self.package.model_rel.rpartition("/")
        if spec is None:
            self.methods.add(self._copy(self.package.model_rel))
            return
        fd = create_file(self._folders[parent], name)
        try:
            data = memoryview(spec.SerializeToString(deterministic=True))  # map fields (metadata) in key order
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def _put_in_place(self):
        """Claim OUT, or swap with the package --force replaces; returns where that old package now is (or None).
        Its removal comes after, outside the few steps that signals must not split (it may take a while), and also
        runs when a signal ends the run there (a second one does not cut it short: mlopt/signals.py); if a SIGKILL
        does, the next run for OUT removes the rest: its owner is then gone."""
        fd, name = self.dest.dir_fd, self.dest.name
        if self.dest.replaces is not None and _identity_at(fd, name) == self.dest.replaces:
            old = claim.swap(fd, self.staging, name, aside=staging.new_name(name, staging.OLD))
            self.staging = None
            return old
        try:
            claim.claim(fd, self.staging, name)
        except FileExistsError:
            what = "already exists: it appeared while mlopt was writing" if self.dest.replaces is None else "changed while mlopt was writing"
            raise destination.needs_force(self.dest.path, f"{what}; nothing was replaced (use {{force}} to replace it)") from None
        self.staging = None
        return None

    def _remove_replaced(self, old):
        if _identity_at(self.dest.dir_fd, old) != self.dest.replaces:  # only the package we checked, nothing else
            return
        try:
            staging.remove_tree(self.dest.dir_fd, self.dest.parent, old)
        except OSError as e:
            self.notes.append(f"the replaced package could not be removed from {old} ({e.strerror})")

    def abort(self):
        """Stop the copy and remove everything this run created."""
        self._cancel.set()
        if self._thread is not None and self._thread.ident is not None:  # started: it may be writing in staging
            self._thread.join()
        self._cleanup()

    def _cleanup(self):
        """Idempotent: may run again if a signal cut it short."""
        self._close_folders()
        if self.staging is not None and self.dest.dir_fd is not None:
            try:
                staging.remove_tree(self.dest.dir_fd, self.dest.parent, self.staging)
            except OSError:  # gone already, or cannot be: the next run for OUT removes it (its owner is gone)
                pass
            self.staging = None
        self.dest.close(failed=True)
        _LIVE.discard(self)

    def _close_folders(self):
        while self._folders:
            os.close(self._folders.popitem()[1])

    def _write_error(self, error):
        """The one-line error for a failed write (destination.write_failure), naming OUT."""
        return destination.write_failure(self.dest.path, error, self.dest.parent)


def _identity_at(dir_fd, name):
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_package(package, spec, out_path, force=False, link=False):
    """Write `package` to `out_path` atomically, its root model replaced by `spec` (None: copied unchanged).

    Returns the copy methods used. With `link`, files are hard-linked to the input's: safe because neither mlopt
    nor Core ML edits a package's files in place, but editing one then edits both."""
    with PackageWriter(package, out_path, force=force, link=link) as writer:
        return writer.commit(spec)

/* hsync._walk: one directory listed with one lstat (statx) per name, in C.
 *
 * The scan's inner loop in Python spends more time creating os.stat_result objects and
 * reading their attributes than in the system calls. list(fd) returns, per entry of the
 * directory open as ``fd`` (read from the start, and rewound after, as os.listdir does),
 * the tuple (name, st_mode, st_size, st_mtime_ns, st_ino, st_dev, payload hash,
 * birth time in ns or 0 where the filesystem keeps none, st_uid, st_gid, xattrs),
 * st_size being st_rdev for a character or block device.
 * A file's, FIFO's or device's mode is given (and hashed) without the bits of ``strip``
 * (list(fd, xattrs, strip, since): the set-id bits a pair cannot keep); ``xattrs`` is
 * -2 for a node whose ctime is before ``since`` (ns; 0: none is).
 * ``xattrs`` is -1 unless list(fd, True) asked for it, then the size llistxattr gives
 * (0: the node has no extended attribute, nothing more to read; -1: the filesystem has
 * none, or it failed). An entry whose lstat fails with anything but ENOENT is
 * (name, None, errno, 0, 0, 0, 0, 0, 0, 0, -1); one gone since readdir
 * (ENOENT) is left out. Names are decoded as os.listdir decodes them (the filesystem
 * encoding with surrogateescape), so a name that is not UTF-8 survives. Symlinks are
 * never followed. hsync/backends/fs/scan.py has the same function in Python, used where
 * this module was not built.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <stdio.h>
#include <sys/sysmacros.h>
#include <stdint.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>
#ifndef SYS_openat2
#define SYS_openat2 437 /* the same number on every architecture (Linux 5.6) */
#endif
#ifndef SYS_listxattrat
#define SYS_listxattrat 465 /* the same number on every architecture (Linux 6.13) */
#endif
#endif

/* The size llistxattr gives for ``name`` in the directory open as ``dfd``: by
 * listxattrat (Linux 6.13) relative to the directory, else by llistxattr of the path
 * /proc/self/fd/DFD/NAME, whose walk through /proc cost about twice the call itself
 * (9.5 against 4.3 us a name from Python). Called with the interpreter's lock held
 * or not: no Python object is touched. */
static ssize_t
list_xattrs_at(int dfd, const char *name)
{
#ifdef __linux__
    static int no_listxattrat = 0;
    if (!no_listxattrat) {
        long got = syscall(SYS_listxattrat, dfd, name, AT_SYMLINK_NOFOLLOW, NULL, (size_t)0);
        if (got >= 0 || (errno != ENOSYS && errno != EPERM))
            return (ssize_t)got;
        no_listxattrat = 1; /* an older kernel, or a seccomp filter that refuses it */
    }
#endif
    char path[64 + 256];
    snprintf(path, sizeof path, "/proc/self/fd/%d/%s", dfd, name);
    return llistxattr(path, NULL, 0);
}

/* splitmix64's finalizer: every input bit reaches every output bit */
static inline uint64_t
mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The entry's payload hash: its name and what a sync compares (SPEC 2): kind, then
 * permission bits (not a symlink's: it has none), size for a file, the device number
 * for a device node (carried in st_size, see below), and the mtime (a symlink's too);
 * a symlink's target is added by the caller. */
static inline int64_t
entry_hash(const char *name, const struct stat *st)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a over the name's bytes */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ULL;
    }
    h = mix64(h ^ (uint64_t)(st->st_mode & S_IFMT));
    if (!S_ISLNK(st->st_mode))
        h = mix64(h ^ (uint64_t)(st->st_mode & 07777));
    if (S_ISREG(st->st_mode) || S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode))
        h = mix64(h ^ (uint64_t)st->st_size);
    h = mix64(h ^ (uint64_t)((long long)st->st_mtim.tv_sec * 1000000000LL
                             + (long long)st->st_mtim.tv_nsec));
    return (int64_t)h;
}

static PyObject *
walk_list(PyObject *self, PyObject *args)
{
    PyObject *arg;
    int want_xattrs = 0;
    unsigned int strip = 0;
    long long since = 0;
    if (!PyArg_ParseTuple(args, "O|pIL", &arg, &want_xattrs, &strip, &since))
        return NULL;
    int fd = PyObject_AsFileDescriptor(arg);
    if (fd < 0)
        return NULL;
    int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dfd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    DIR *dir = fdopendir(dfd);
    if (dir == NULL) {
        int e = errno;
        close(dfd);
        errno = e;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    rewinddir(dir);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto fail;
    for (;;) {
        struct dirent *ent;
        struct stat st;
        int rc, err = 0;
        errno = 0;
        ent = readdir(dir);
        if (ent == NULL) {
            if (errno != 0) {
                PyErr_SetFromErrno(PyExc_OSError);
                goto fail;
            }
            break;
        }
        const char *n = ent->d_name;
        if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0)))
            continue;
        long long born = 0;
#ifdef STATX_BTIME
        /* the birth time makes an identity that dies with its node: an inode number
         * alone is reused as soon as a file is deleted */
        struct statx sx;
        rc = statx(dirfd(dir), n, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT,
                   STATX_BASIC_STATS | STATX_BTIME, &sx);
        if (rc == 0) {
            memset(&st, 0, sizeof st);
            st.st_mode = sx.stx_mode;
            st.st_size = (off_t)sx.stx_size;
            st.st_mtim.tv_sec = sx.stx_mtime.tv_sec;
            st.st_mtim.tv_nsec = sx.stx_mtime.tv_nsec;
            st.st_ino = (ino_t)sx.stx_ino;
            st.st_dev = makedev(sx.stx_dev_major, sx.stx_dev_minor);
            st.st_rdev = makedev(sx.stx_rdev_major, sx.stx_rdev_minor);
            st.st_uid = sx.stx_uid;
            st.st_gid = sx.stx_gid;
            st.st_ctim.tv_sec = sx.stx_ctime.tv_sec;
            st.st_ctim.tv_nsec = sx.stx_ctime.tv_nsec;
            if (sx.stx_mask & STATX_BTIME)
                born = (long long)sx.stx_btime.tv_sec * 1000000000LL + sx.stx_btime.tv_nsec;
        }
        else if (errno == ENOSYS)
            rc = fstatat(dirfd(dir), n, &st, AT_SYMLINK_NOFOLLOW);
#else
        rc = fstatat(dirfd(dir), n, &st, AT_SYMLINK_NOFOLLOW);
#endif
        if (rc != 0) {
            err = errno;
            if (err == ENOENT)
                continue;
        }
        if (rc == 0 && (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)))
            st.st_size = (off_t)st.st_rdev; /* a device's payload: its number, not a size */
        if (rc == 0 && !S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode))
            st.st_mode &= ~(mode_t)strip; /* set-id bits the pair cannot keep (a file's, a
                                             FIFO's or a device's: the apply strips them) */
        long long xsize = -1;
        if (rc == 0 && want_xattrs && since
            && (long long)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec < since)
            xsize = -2; /* its attributes did not change since then: not read */
        else if (rc == 0 && want_xattrs) {
            /* one call per node: most have no attribute, and the answer (0) says so */
            ssize_t got = list_xattrs_at(dirfd(dir), n);
            xsize = got < 0 ? -1 : (long long)got;
        }
        PyObject *name = PyUnicode_DecodeFSDefault(n);
        if (name == NULL)
            goto fail;
        PyObject *item;
        if (rc != 0)
            item = Py_BuildValue("(NOiiiiiiiii)", name, Py_None, err, 0, 0, 0, 0, 0, 0, 0, -1);
        else
            item = Py_BuildValue(
                "(NIKLKKLLIIL)", name, (unsigned int)st.st_mode, (unsigned long long)st.st_size,
                (long long)st.st_mtim.tv_sec * 1000000000LL + (long long)st.st_mtim.tv_nsec,
                (unsigned long long)st.st_ino, (unsigned long long)st.st_dev,
                (long long)entry_hash(n, &st), born, (unsigned int)st.st_uid,
                (unsigned int)st.st_gid, xsize);
        if (item == NULL)
            goto fail;
        rc = PyList_Append(out, item);
        Py_DECREF(item);
        if (rc != 0)
            goto fail;
    }
    rewinddir(dir); /* the descriptor's offset is shared: leave it where it was found */
    closedir(dir);
    return out;
fail:
    rewinddir(dir);
    closedir(dir);
    Py_XDECREF(out);
    return NULL;
}

/* btime(dir_fd, name): the birth time (ns) of name in the directory dir_fd ("": the
 * directory itself), never following a symlink; 0 where the filesystem keeps none or
 * statx fails (hsync.backends.fs.posix.birth_time, without ctypes). */
static PyObject *
walk_btime(PyObject *self, PyObject *args)
{
    int fd;
    PyObject *name;
    if (!PyArg_ParseTuple(args, "iO&:btime", &fd, PyUnicode_FSConverter, &name))
        return NULL;
    long long born = 0;
#ifdef STATX_BTIME
    const char *n = PyBytes_AS_STRING(name);
    struct statx sx;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = statx(fd, n, AT_SYMLINK_NOFOLLOW | (n[0] ? 0 : AT_EMPTY_PATH), STATX_BTIME, &sx);
    Py_END_ALLOW_THREADS
    if (rc == 0 && (sx.stx_mask & STATX_BTIME))
        born = (long long)sx.stx_btime.tv_sec * 1000000000LL + sx.stx_btime.tv_nsec;
#endif
    Py_DECREF(name);
    return PyLong_FromLongLong(born);
}

/* openat2(dir_fd, path, flags, resolve) -> (fd, 0) or (-1, errno): openat2(2) with
 * struct open_how {flags, 0, resolve} (hsync.backends.fs.posix.open_beneath, without
 * ctypes); (-1, ENOSYS) where the system has no such call. */
static PyObject *
walk_openat2(PyObject *self, PyObject *args)
{
    int fd;
    const char *path;
    unsigned long long flags, resolve;
    if (!PyArg_ParseTuple(args, "iyKK:openat2", &fd, &path, &flags, &resolve))
        return NULL;
#if defined(__linux__) && defined(SYS_openat2)
    struct { uint64_t flags, mode, resolve; } how = {flags, 0, resolve};
    long rc;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_openat2, fd, path, &how, sizeof how);
    if (rc < 0)
        err = errno;
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(li)", rc < 0 ? -1L : rc, err);
#else
    return Py_BuildValue("(ii)", -1, ENOSYS);
#endif
}

/* writeback(fd) -> None: sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE), the writeback
 * of the file's dirty pages started and not waited for (hsync.backends.fs.posix.
 * start_writeback, without ctypes: one call per file copied). Errors are ignored: the
 * batch's flush makes the file durable either way. */
static PyObject *
walk_writeback(PyObject *self, PyObject *args)
{
    int fd;
    if (!PyArg_ParseTuple(args, "i:writeback", &fd))
        return NULL;
#if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)
    Py_BEGIN_ALLOW_THREADS
    (void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    Py_END_ALLOW_THREADS
#endif
    Py_RETURN_NONE;
}

/* create(dir_fd, name, data, mode, chmod, mtime_ns) -> (errno, stage): a small file made
 * whole at once (hsync.backends.fs.posix.create_whole: the content a push sends, held in
 * memory): written into an unnamed file in dir_fd (O_TMPFILE, with the permission bits
 * of ``mode``, as the umask leaves them), its mode set to ``chmod`` where that is not -1,
 * its atime and mtime to ``mtime_ns``, then linked in as ``name`` (never over a node
 * that is there: EEXIST). One call for what took six from Python, each giving the
 * interpreter's lock to the other threads and taking it back. (0, 0) when it is done;
 * else the errno and the stage it failed at: 0 making the unnamed file (nothing made),
 * 1 writing it or setting its mode or times (nothing linked), 2 linking it in. */
static PyObject *
walk_create(PyObject *self, PyObject *args)
{
    int dfd, mode, chmod_to;
    long long mtime;
    PyObject *name_obj;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "iO&y*iiL:create", &dfd, PyUnicode_FSConverter, &name_obj,
                          &data, &mode, &chmod_to, &mtime))
        return NULL;
    const char *name = PyBytes_AS_STRING(name_obj);
    int err = 0, stage = 0;
#if defined(__linux__) && defined(O_TMPFILE)
    Py_BEGIN_ALLOW_THREADS
    int fd = openat(dfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, mode);
    if (fd < 0) {
        err = errno;
    } else {
        stage = 1;
        const char *p = data.buf;
        Py_ssize_t left = data.len;
        while (left > 0) {
            /* at most 64 KiB a write: the kernel gives a write a folio of its size,
               and a large one costs a virtual machine's host a fault per page
               (posix.WRITE_PIECE) */
            ssize_t n = write(fd, p, (size_t)(left < 65536 ? left : 65536));
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                err = errno;
                break;
            }
            p += n;
            left -= n;
        }
        if (!err && chmod_to >= 0 && fchmod(fd, (mode_t)chmod_to) < 0)
            err = errno;
        if (!err) {
            long long sec = mtime / 1000000000LL, nsec = mtime % 1000000000LL;
            if (nsec < 0) { /* before 1970: the seconds floored, as os.utime does */
                nsec += 1000000000LL;
                sec -= 1;
            }
            struct timespec times[2];
            times[0].tv_sec = times[1].tv_sec = (time_t)sec;
            times[0].tv_nsec = times[1].tv_nsec = (long)nsec;
            if (futimens(fd, times) < 0)
                err = errno;
        }
        if (!err) {
            stage = 2;
            /* the descriptor itself (Linux 6.10 lets the process that opened the file
               link it so; before, only a holder of CAP_DAC_READ_SEARCH), else its
               path in /proc, whose walk costs more than the link */
            if (linkat(fd, "", dfd, name, AT_EMPTY_PATH) < 0) {
                err = errno;
                if (err == ENOENT || err == EPERM || err == EINVAL) {
                    char proc[64];
                    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
                    err = linkat(AT_FDCWD, proc, dfd, name, AT_SYMLINK_FOLLOW) < 0 ? errno : 0;
                }
            }
        }
        close(fd);
    }
    Py_END_ALLOW_THREADS
#else
    err = ENOSYS;
#endif
    PyBuffer_Release(&data);
    Py_DECREF(name_obj);
    return Py_BuildValue("(ii)", err, stage);
}

static PyMethodDef methods[] = {
    {"list", walk_list, METH_VARARGS,
     "list(fd, xattrs=False, strip=0, since=0) -> [(name, mode, size, mtime_ns, ino, dev, hash, btime_ns, uid, gid,"
     " xattrs_size) | (name, None, errno, ...)]"},
    {"openat2", walk_openat2, METH_VARARGS,
     "openat2(dir_fd, path, flags, resolve) -> (fd, 0) | (-1, errno)"},
    {"btime", walk_btime, METH_VARARGS,
     "btime(dir_fd, name) -> the birth time in ns of name in dir_fd (\"\": itself), 0 if none"},
    {"create", walk_create, METH_VARARGS,
     "create(dir_fd, name, data, mode, chmod, mtime_ns) -> (errno, stage): a small file "
     "written unnamed and linked in as name"},
    {"writeback", walk_writeback, METH_VARARGS,
     "writeback(fd) -> None: the writeback of fd's dirty pages started, not waited for"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "hsync._walk", "One directory listed with one lstat (statx) per name.",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__walk(void)
{
    return PyModule_Create(&module);
}

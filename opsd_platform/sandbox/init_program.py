"""INIT of the sandbox: run as `python -I -S -c <this file> CONFIG_JSON`, inside the namespaces when
there are any (launch.py reads it as text). It is trusted code; it never runs anything of the user
before the fork and the privilege drop. Only the standard library: it runs with -I -S.
"""

if __name__ != "__main__":  # a program, read as text and run with `python -I -S -c`; never imported
    raise ImportError(__name__ + " is a program for the sandbox: run it with python -c, do not import it")
import ctypes
import json
import os
import resource
import select
import signal
import stat
import struct
import sys

cfg = json.loads(sys.argv[1])
st = cfg["status_fd"]  # a pipe to the parent: the program never gets it (close-on-exec)
ctl = cfg["ctl_fd"]  # EOF on this pipe = stop now (the parent timed out, was flooded, or died)
os.set_inheritable(st, False)
os.set_inheritable(ctl, False)
def report(obj):
    os.write(st, (json.dumps(obj) + "\n").encode())
def fail(msg):
    report({"setup_error": msg})
    os._exit(125)
libc = ctypes.CDLL(None, use_errno=True)
UL = ctypes.c_ulong
libc.prctl(4, UL(0), UL(0), UL(0), UL(0))  # PR_SET_DUMPABLE 0: no /proc/1/{environ,fd,mem}
def check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        fail(what + ": " + os.strerror(e))
class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]
def setattr_ro(path, ro, recursive):
    a = MountAttr(1 if ro else 0, 0 if ro else 1, 0, 0)
    rc = libc.syscall(442, -100, path.encode(), 0x8000 if recursive else 0,
                      ctypes.byref(a), ctypes.c_size_t(ctypes.sizeof(a)))
    check(rc, "mount_setattr " + path)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND, MS_MOVE, MS_REC = 1, 2, 4, 4096, 8192, 16384
def mount(src, dst, fstype, flags, data, what):
    enc = lambda x: None if x is None else x.encode()
    check(libc.mount(enc(src), enc(dst), enc(fstype), UL(flags), enc(data)), what)
def open_beneath(base, rel):  # no symlink anywhere on the way: the tree is the program's
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        parts = rel.split("/")
        for part in parts[:-1]:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
uid = cfg["uid"]
pid1 = os.getpid() == 1  # PID 1 of our own PID namespace: kill(-1) then means "the sandbox"
cwd = cfg["work"]
if cfg["mount"]:
    if not pid1:
        fail("a private root needs a PID namespace")
    try:
        out_fd = os.open(cfg["out"], os.O_RDONLY | os.O_DIRECTORY)  # host dir: collected files
        work_fd = os.open(cfg["work"], os.O_RDONLY | os.O_DIRECTORY)  # host dir: staged files
        new = cfg["newroot"]
        # A fresh root: only the system dirs and the interpreter's prefix, bound from the host
        # (no /home, /root, /work, /var, /run, ...: no data sets, checkouts, sockets, secrets).
        mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m", "tmpfs root")
        for path in cfg["binds"]:
            target = new + path
            if os.path.islink(path):  # /bin -> usr/bin and the like
                os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
                os.symlink(os.readlink(path), target)
            elif os.path.isdir(path):
                os.makedirs(target, 0o755, exist_ok=True)
                mount(path, target, None, MS_BIND | MS_REC, None, "bind " + path)
        tmp = new + "/tmp"
        os.makedirs(tmp, 0o755, exist_ok=True)
        opts = "mode=0700,size=%d,nr_inodes=%d" % (cfg["tmp_bytes"], cfg["tmp_inodes"])
        if uid is not None:
            opts += ",uid=%d,gid=%d" % (uid, uid)
        mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, opts, "tmpfs /tmp")  # the work dir: size-capped
        if os.path.isdir(new + "/dev/shm"):  # the host's /dev/shm: neither readable nor writable
            mount("tmpfs", new + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "mode=0755,size=4k",
                  "tmpfs /dev/shm")
        for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=work_fd):
            dst = os.path.normpath(os.path.join(tmp, dirpath))
            if dirpath != ".":
                os.mkdir(dst, 0o755)
                if uid is not None:
                    os.chown(dst, uid, uid)
            for name in filenames:
                src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
                dfile = os.open(os.path.join(dst, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                while True:
                    chunk = os.read(src, 1 << 20)
                    if not chunk:
                        break
                    write_all(dfile, chunk)
                if uid is not None:
                    os.fchown(dfile, uid, uid)
                os.close(src)
                os.close(dfile)
        os.close(work_fd)
        os.chdir(new)
        mount(new, "/", None, MS_MOVE, None, "move root")
        check(libc.chroot(b"."), "chroot")
        os.chdir("/")
    except OSError as e:
        fail("private root: " + repr(e))
    setattr_ro("/", True, True)
    setattr_ro("/tmp", False, False)
    cwd = "/tmp"
def seccomp():
    # x86_64 only. Denied: sockets other than AF_INET/AF_INET6 (host unix sockets, vsock,
    # netlink, ...), new namespaces (unprivileged user namespaces), SysV IPC (escapes RLIMIT_AS),
    # memfd (memory outside RLIMIT_AS), keyrings, bpf, perf, userfaultfd, io_uring, the mount
    # API and chroot; clone3 says ENOSYS (its flags cannot be inspected), glibc falls back.
    ins = []
    def op(code, jt, jf, k):
        ins.append(struct.pack("=HBBI", code, jt, jf, k))
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL, ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
    EPERM, EACCES, ENOSYS = 1, 13, 38
    op(LD, 0, 0, 4)  # arch
    op(JEQ, 1, 0, 0xC000003E)
    op(RET, 0, 0, KILL)  # i386 entry points (int 0x80) and the like
    op(LD, 0, 0, 0)  # syscall number
    op(JGE, 0, 1, 0x40000000)
    op(RET, 0, 0, ERRNO | ENOSYS)  # the x32 ABI
    for nr in (272, 308, 29, 68, 64, 250, 248, 249, 321, 298, 323, 425, 319, 447,
               165, 166, 155, 161, 428, 429, 430, 431, 432, 433, 442):  # + mount API, chroot
        op(JEQ, 0, 1, nr)
        op(RET, 0, 0, ERRNO | EPERM)
    op(JEQ, 0, 1, 435)  # clone3
    op(RET, 0, 0, ERRNO | ENOSYS)
    op(JEQ, 0, 4, 56)  # clone: no CLONE_NEW* flags
    op(LD, 0, 0, 16)
    op(JSET, 0, 1, 0x7E020000)
    op(RET, 0, 0, ERRNO | EPERM)
    op(RET, 0, 0, ALLOW)
    op(JEQ, 0, 5, 41)  # socket: AF_INET, AF_INET6 only (useless anyway in the empty net namespace)
    op(LD, 0, 0, 16)
    op(JEQ, 2, 0, 2)
    op(JEQ, 1, 0, 10)
    op(RET, 0, 0, ERRNO | EACCES)
    op(RET, 0, 0, ALLOW)
    op(RET, 0, 0, ALLOW)
    class FProg(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    buf = ctypes.create_string_buffer(b"".join(ins))
    prog = FProg(len(ins), ctypes.addressof(buf))
    if libc.prctl(22, UL(2), ctypes.byref(prog), UL(0), UL(0)) != 0:  # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
pid = os.fork()
if pid == 0:
    try:
        os.chdir(cwd)
        for name, soft, hard in cfg["rlimits"]:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        # No capabilities after exec, even as uid 0 of a user namespace (the non-root modes):
        # SECBIT_NOROOT(+LOCKED), an empty bounding set, no ambient capabilities.
        if libc.prctl(28, UL(0x3), UL(0), UL(0), UL(0)) != 0:  # PR_SET_SECUREBITS
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECUREBITS)")
        cap = 0
        while libc.prctl(24, UL(cap), UL(0), UL(0), UL(0)) == 0:  # PR_CAPBSET_DROP until EINVAL
            cap += 1
        if cap == 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
        libc.prctl(47, UL(4), UL(0), UL(0), UL(0))  # PR_CAP_AMBIENT_CLEAR_ALL
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        if libc.prctl(38, UL(1), UL(0), UL(0), UL(0)) != 0:  # PR_SET_NO_NEW_PRIVS: setuid binaries stay powerless
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if cfg["seccomp"]:
            seccomp()
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except BaseException as e:
        report({"exec_error": repr(e)})  # the status pipe is closed only by a successful exec
    os._exit(126)
def resident_total():  # proportional set size of every process of the sandbox but INIT
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or entry == "1":
            continue
        try:
            with open("/proc/" + entry + "/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            continue
    return total
try:
    pidfd = os.pidfd_open(pid)
except (AttributeError, OSError):
    pidfd = None
watch = [ctl] if pidfd is None else [ctl, pidfd]
tick = 0.05 if pidfd is not None else 0.01
mem_cap = cfg["mem_cap"] if pid1 else 0
status = ru = None
why = None
while True:
    ready = select.select(watch, [], [], tick)[0]
    while True:
        try:
            p, s, r = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            p = 0
        if p == 0:
            break
        if p == pid:
            status, ru = s, r
    if status is not None:
        break
    if ctl in ready:
        why = "stopped"
        break
    if mem_cap:
        used = resident_total()
        if used > mem_cap:
            why = "memory"
            break
# Nothing of the program survives it: kill the rest (double-forked, setsid'ed, ...) and reap.
if pid1:
    try:
        os.kill(-1, signal.SIGKILL)  # from PID 1: every other process of this PID namespace
    except ProcessLookupError:
        pass
    while True:
        try:
            p, s, r = os.wait4(-1, 0)
        except ChildProcessError:
            break
        if p == pid:
            status, ru = s, r
elif status is None:
    os.kill(pid, signal.SIGKILL)
    while status is None:
        p, s, r = os.wait4(pid, 0)
        status, ru = s, r
if cfg["mount"]:  # copy the files to collect out of the private /tmp, safely: the program is gone
    for i, rel in enumerate(cfg["collect"]):
        try:
            fd = open_beneath("/tmp", rel)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                continue
            data = os.read(fd, cfg["max_collect"])
            while len(data) < cfg["max_collect"]:
                chunk = os.read(fd, cfg["max_collect"] - len(data))
                if not chunk:
                    break
                data += chunk
            ofd = os.open(str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=out_fd)
            write_all(ofd, data)
            os.close(ofd)
        except OSError:
            pass
        finally:
            os.close(fd)
out = {"cpu_s": ru.ru_utime + ru.ru_stime}
if why == "stopped":
    out["stopped"] = True
elif why == "memory":
    out["memory_exceeded"] = used
if os.WIFSIGNALED(status):
    out["signal"] = os.WTERMSIG(status)
    code = 128 + out["signal"]
else:
    out["exit"] = code = os.WEXITSTATUS(status)
report(out)
os._exit(code)

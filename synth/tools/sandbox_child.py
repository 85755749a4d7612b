"""The python tool's bootstrap: runs *inside* the sandbox, before and around the agent's code.

Standard library only, and never imported by agentcpt: ``synth.tools.sandbox`` passes this
file's text to ``python -I -c`` with one JSON argument (the limits and which setup to do)
and the agent's code on stdin. In order, before any agent code runs:

1. read the code from stdin, then point stdin at ``/dev/null``;
2. (``unshare`` backend only) build the filesystem view bubblewrap would build: a tmpfs
   root holding read-only binds of the interpreter's directories, a few device nodes, a
   private ``/proc`` (``/proc/sys`` read-only) and a size-limited tmpfs scratch dir; then
   ``pivot_root`` into it and detach the host's tree;
3. write the code to ``main.py`` in the scratch dir and ``chdir`` there;
4. resource limits: CPU, address space, file size, no core files, tasks (``RLIMIT_NPROC``);
5. drop every capability (bounding, ambient, effective) and set ``no_new_privs``;
6. a seccomp filter (BPF assembled here, loaded with ``prctl`` through ``ctypes``): no
   process creation (unless allowed), no ``ptrace``, mounts, namespaces, keyrings, BPF,
   ``io_uring``, kernel modules or perf events, and only ``AF_UNIX`` sockets;
7. an audit hook (PEP 578) that refuses network and process calls with a message the agent
   can read (the seccomp filter is what holds if ``ctypes`` goes around it);
8. ``exec`` of the code.

A setup step that fails exits with ``EXIT_SETUP`` and a message: the sandbox fails closed.
"""

import ctypes
import errno
import json
import os
import platform
import resource
import struct
import sys
import traceback

EXIT_MEMORY = 86
EXIT_DENIED = 87
EXIT_SETUP = 88


class SandboxDenied(PermissionError):
    pass


def _fail_setup(step, err):
    sys.stderr.write("sandbox setup failed at " + step + ": " + str(err) + "\n")
    sys.stderr.flush()
    os._exit(EXIT_SETUP)


# ---------------------------------------------------------------------------
# Syscalls through ctypes
# ---------------------------------------------------------------------------

_LIBC = ctypes.CDLL(None, use_errno=True)
# prctl is variadic and some options insist that unused arguments are 0: pass full words.
_LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(result, what):
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, what + ": " + os.strerror(code))


def _mount(source, target, fstype, flags, data):
    enc = [None if x is None else x.encode() for x in (source, target, fstype, data)]
    _check(_LIBC.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), "mount " + target)


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
# statvfs f_flag bits that a bind remount inside a user namespace must keep (they are locked).
_ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME,
             2048: MS_NODIRATIME, 4096: MS_RELATIME}  # fmt: skip


def _bind_readonly(source, target):
    _mount(source, target, None, MS_BIND | MS_REC, None)
    kept = 0
    for st_flag, ms_flag in _ST_TO_MS.items():
        if os.statvfs(source).f_flag & st_flag:
            kept |= ms_flag
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | kept, None)


# ---------------------------------------------------------------------------
# 2. The filesystem view (unshare backend; bubblewrap builds the same one itself)
# ---------------------------------------------------------------------------


def build_root(ro_paths, scratch, scratch_bytes, root_dir="/tmp"):
    """A new root with ``ro_paths`` read-only, private /proc and /dev, and a tmpfs ``scratch``.

    ``root_dir`` is any existing host directory that holds none of ``ro_paths`` (the tmpfs
    covers it in this mount namespace only). The scratch tmpfs is mounted before the
    read-only paths, so an interpreter that lives under the scratch dir on the host (a
    checkout in /tmp) is bound on top of it instead of hidden by it."""
    new_root = root_dir
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    _mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    os.makedirs(new_root + scratch, exist_ok=True)
    _mount("tmpfs", new_root + scratch, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0777,size=" + str(scratch_bytes))
    for path in ro_paths:
        if os.path.islink(path):  # /lib -> usr/lib on merged-usr systems
            os.symlink(os.readlink(path), new_root + path)
            continue
        os.makedirs(new_root + path, exist_ok=True)
        _bind_readonly(path, new_root + path)
    os.makedirs(new_root + "/dev")
    for name in ("null", "zero", "full", "random", "urandom"):
        open(new_root + "/dev/" + name, "w").close()
        _mount("/dev/" + name, new_root + "/dev/" + name, None, MS_BIND, None)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, new_root + "/dev/" + name)
    os.makedirs(new_root + "/proc")
    _mount("proc", new_root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    for name in ("sys", "sysrq-trigger", "irq", "bus"):  # as bubblewrap does: no kernel knobs
        path = new_root + "/proc/" + name
        if os.path.exists(path):
            _mount(path, path, None, MS_BIND | MS_REC, None)
            _mount(
                None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, None
            )
    os.makedirs(new_root + "/.oldroot")
    os.chdir(new_root)
    _check(_LIBC.syscall(_SYSCALLS["pivot_root"], b".", b".oldroot"), "pivot_root")
    os.chdir("/")
    _check(_LIBC.umount2(b"/.oldroot", MNT_DETACH), "umount /.oldroot")
    os.rmdir("/.oldroot")
    _mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)


# ---------------------------------------------------------------------------
# 5. Capabilities
# ---------------------------------------------------------------------------

PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2


def drop_capabilities():
    cap = 0
    while _LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    _LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = bytes(24)  # two empty {effective, permitted, inheritable} sets
    _check(_LIBC.syscall(_SYSCALLS["capset"], header, data), "capset")


def no_new_privs():
    _check(_LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


# ---------------------------------------------------------------------------
# 6. Seccomp
# ---------------------------------------------------------------------------

# Syscall numbers (from the kernel's unistd headers) of the two architectures we build for.
_X86_64 = {
    "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "clone": 56, "clone3": 435,
    "socket": 41, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308,
    "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
    "userfaultfd": 323, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
    "finit_module": 313, "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168,
    "acct": 163, "quotactl": 179, "open_by_handle_at": 304, "name_to_handle_at": 303,
    "iopl": 172, "ioperm": 173, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "fanotify_init": 300, "mount_setattr": 442, "move_mount": 429,
    "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "syslog": 103, "settimeofday": 164, "clock_settime": 227, "adjtimex": 159,
    "clock_adjtime": 305, "vhangup": 153, "kcmp": 312, "pidfd_getfd": 438, "personality": 135,
    "capset": 126,
}  # fmt: skip
_AARCH64 = {
    "execve": 221, "execveat": 281, "clone": 220, "clone3": 435, "socket": 198, "ptrace": 117,
    "process_vm_readv": 270, "process_vm_writev": 271, "mount": 40, "umount2": 39,
    "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268, "keyctl": 219, "add_key": 217,
    "request_key": 218, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
    "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
    "delete_module": 106, "reboot": 142, "swapon": 224, "swapoff": 225, "acct": 89,
    "quotactl": 60, "open_by_handle_at": 265, "name_to_handle_at": 264, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "fanotify_init": 262, "mount_setattr": 442,
    "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "syslog": 116, "settimeofday": 170, "clock_settime": 112, "adjtimex": 171,
    "clock_adjtime": 266, "vhangup": 58, "kcmp": 272, "pidfd_getfd": 438, "personality": 92,
    "capset": 91,
}  # fmt: skip
_ARCHES = {"x86_64": (0xC000003E, _X86_64), "aarch64": (0xC00000B7, _AARCH64)}
_AUDIT_ARCH, _SYSCALLS = _ARCHES.get(platform.machine(), (None, {}))

_ALWAYS_DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "chroot",
    "unshare", "setns", "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "open_by_handle_at", "name_to_handle_at", "iopl",
    "ioperm", "io_uring_setup", "io_uring_enter", "io_uring_register", "fanotify_init",
    "mount_setattr", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "syslog",
    "settimeofday", "clock_settime", "adjtimex", "clock_adjtime", "vhangup", "kcmp", "pidfd_getfd",
    "personality",
)  # fmt: skip
_PROCESS_CREATION = ("fork", "vfork", "execve", "execveat")

# BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
_LD_ABS, _JEQ, _JSET, _JGE, _RET = 0x20, 0x15, 0x45, 0x35, 0x06
_ALLOW, _KILL_PROCESS, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_CLONE_THREAD = 0x00010000
_CLONE_NEW_NAMESPACES = 0x7E020000  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_AF_UNIX = 1


def seccomp_program(allow_subprocesses):
    """The filter as BPF instructions (code, jt, jf, k)."""
    deny = [n for n in _ALWAYS_DENIED if n in _SYSCALLS]
    if not allow_subprocesses:
        deny += [n for n in _PROCESS_CREATION if n in _SYSCALLS]
    eperm = _ERRNO | errno.EPERM
    prog = [
        (_LD_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ, 1, 0, _AUDIT_ARCH),
        (_RET, 0, 0, _KILL_PROCESS),  # another ABI (i386 on x86_64): its numbers differ
        (_LD_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    if platform.machine() == "x86_64":
        prog += [(_JGE, 0, 1, 0x40000000), (_RET, 0, 0, eperm)]  # the x32 ABI
    for name in deny:
        prog += [(_JEQ, 0, 1, _SYSCALLS[name]), (_RET, 0, 0, eperm)]
    # clone3 passes its flags in a struct BPF cannot read: ENOSYS makes libc fall back to clone.
    prog += [(_JEQ, 0, 1, _SYSCALLS["clone3"]), (_RET, 0, 0, _ERRNO | errno.ENOSYS)]
    clone = [(_LD_ABS, 0, 0, 16), (_JSET, 0, 1, _CLONE_NEW_NAMESPACES), (_RET, 0, 0, eperm)]
    if not allow_subprocesses:  # threads (CLONE_THREAD) yes, processes no
        clone += [(_JSET, 1, 0, _CLONE_THREAD), (_RET, 0, 0, eperm)]
    clone += [(_RET, 0, 0, _ALLOW)]
    prog += [(_JEQ, 0, len(clone), _SYSCALLS["clone"])] + clone
    sock = [
        (_LD_ABS, 0, 0, 16),
        (_JEQ, 0, 1, _AF_UNIX),
        (_RET, 0, 0, _ALLOW),
        (_RET, 0, 0, _ERRNO | errno.EACCES),
    ]
    prog += [(_JEQ, 0, len(sock), _SYSCALLS["socket"])] + sock
    prog += [(_RET, 0, 0, _ALLOW)]
    return prog


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp(allow_subprocesses):
    if _AUDIT_ARCH is None:
        raise OSError(errno.ENOSYS, "no seccomp syscall table for " + platform.machine())
    prog = seccomp_program(allow_subprocesses)
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    _check(_LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "seccomp")


# ---------------------------------------------------------------------------
# 7. Audit hook: readable refusals
# ---------------------------------------------------------------------------

_NETWORK = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
                      "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"})  # fmt: skip
_PROCESS = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn",
                      "os.fork", "os.forkpty", "pty.spawn"})  # fmt: skip


def install_audit_hook(allow_subprocesses):
    def audit(event, args):
        if event in _NETWORK:
            raise SandboxDenied("network access is disabled in this sandbox (" + event + ")")
        if event in _PROCESS and not allow_subprocesses:
            raise SandboxDenied("starting processes is disabled in this sandbox (" + event + ")")

    sys.addaudithook(audit)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main():
    cfg = json.loads(sys.argv[1])
    source = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        if cfg["build_root"]:
            build_root(cfg["ro_paths"], cfg["scratch"], cfg["scratch_bytes"], cfg.get("root_dir", "/tmp"))
    except OSError as err:
        _fail_setup("filesystem", err)
    os.chdir(cfg["scratch"])
    with open("main.py", "w", encoding="utf-8") as f:
        f.write(source)
    try:
        step = "rlimits"
        resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))
        resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_bytes"], cfg["memory_bytes"]))
        resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_bytes"], cfg["file_bytes"]))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (cfg["max_processes"], cfg["max_processes"]))
        if cfg["drop_caps"]:
            step = "capabilities"
            drop_capabilities()
        step = "no_new_privs"
        no_new_privs()
        if cfg["seccomp"]:
            step = "seccomp"
            install_seccomp(cfg["allow_subprocesses"])
    except (OSError, ValueError) as err:
        _fail_setup(step, err)
    install_audit_hook(cfg["allow_subprocesses"])
    run_user_code(source)


def run_user_code(source):
    try:
        exec(compile(source, "main.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except MemoryError:
        # Printing a traceback may itself need memory: report briefly and leave.
        try:
            sys.stdout.flush()
            sys.stderr.write("MemoryError\n")
            sys.stderr.flush()
        finally:
            os._exit(EXIT_MEMORY)
    except SystemExit:
        raise
    except BaseException as err:
        et, ev, tb = sys.exc_info()
        traceback.print_exception(et, ev, tb.tb_next)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_DENIED if isinstance(err, SandboxDenied) else 1)
    sys.stdout.flush()
    sys.stderr.flush()


if __name__ == "__main__":
    main()

"""kubensenter: run a command, or a shell, inside the Kubernetes mount namespace.

Usage: kubensenter [-h|--help] [-v|--verbose] [-q|--quiet] [--] [COMMAND [ARG...]]

With KUBENSMNT set, join the namespace it names. Without it, look for the kubens.service pin at
$DEFAULT_KUBENSMNT (default /run/kubens/mnt) and join it when it is there; otherwise run in the
current mount namespace, so this is safe to use whether or not encapsulation is enabled.
No COMMAND starts $SHELL (or /bin/sh). COMMAND replaces this process (exec), so systemd's
Type=notify and main-PID tracking keep working for units that run through kubensenter.

Environment:
  KUBENSMNT          namespace file to join (set by /run/kubens/env)
  DEFAULT_KUBENSMNT  where to autodetect the pin (default /run/kubens/mnt)
  KUBENSENTER_LOG    0 quiet, 1 default, 2 verbose; -v and -q move it

Exit status: the COMMAND's own; 1 when the namespace cannot be joined, 2 on bad usage,
126 when COMMAND is not executable, 127 when it is not found.

This file is self-contained and imports only the standard library: `kubensctl install` lays it on
nodes as /usr/local/bin/kubensenter, run by the system python3 in isolated mode without site (-IS).
It is on the path of every kubelet and runtime start, so it is written for start-up time (see
benchmarks/): no mount table parsing (one open, one ioctl); `posix` rather than `os` (with -S nothing
has imported os, which costs more than the rest of this file); no typing or __future__ imports at run
time (annotations are quoted); libc's setns through _ctypes where the interpreter lacks os.setns.
"""

import posix
import sys

# typing pulls in re, enum, collections and functools: keep it for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, List, NoReturn, Optional, Sequence

DEFAULT_KUBENSMNT = "/run/kubens/mnt"
CLONE_NEWNS = 0x00020000  # include/uapi/linux/sched.h
NS_GET_NSTYPE = 0xB703  # include/uapi/linux/nsfs.h: _IO(0xb7, 0x3)
_NS_NAMES = {
    0x00020000: "mount",
    0x02000000: "cgroup",
    0x04000000: "uts",
    0x08000000: "ipc",
    0x10000000: "user",
    0x20000000: "pid",
    0x40000000: "network",
    0x00000080: "time",
}

QUIET, DEFAULT, VERBOSE = 0, 1, 2
EXIT_ERROR, EXIT_USAGE, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 1, 2, 126, 127


class Fail(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _Log:
    def __init__(self, level: int) -> None:
        self.level = level

    def __call__(self, level: int, message: str) -> None:
        if self.level >= level:
            sys.stderr.write(f"kubensenter: {message}\n")


def _setns(fd: int, path: str) -> None:
    native = getattr(posix, "setns", None)
    if native is not None:
        native(fd, CLONE_NEWNS)
        return
    # Python < 3.12 (RHEL 9's 3.9, Debian 12's 3.11): call libc. Imported here, not at the top, so the
    # common "nothing to join" path never pays for it; and through _ctypes, the C half of ctypes, because
    # `import ctypes` costs about as much as everything else kubensenter does (benchmarks/).
    setns = _libc_setns()
    if setns(fd, CLONE_NEWNS) != 0:
        err = _get_errno()
        raise OSError(err, posix.strerror(err), path)


def _get_errno() -> int:
    import _ctypes

    return _ctypes.get_errno()


def _libc_setns() -> "Callable[[int, int], int]":
    """libc's ``int setns(int, int)`` with errno kept for _get_errno(), as ctypes.CDLL(None, use_errno=True) gives."""
    try:
        import _ctypes

        class c_int(_ctypes._SimpleCData):  # type: ignore[type-arg]  # ctypes.c_int
            _type_ = "i"

        class Function(_ctypes.CFuncPtr):  # a C function returning int, errno saved after the call
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = c_int

        class Libc:  # what CFuncPtr((name, library)) reads: the dlopen(3) handle
            _handle = _ctypes.dlopen(None, posix.RTLD_NOW)  # type: ignore[arg-type]  # NULL: the program itself

        return Function(("setns", Libc()))  # type: ignore[arg-type]
    except (ImportError, AttributeError, TypeError):  # an interpreter whose _ctypes differs: use ctypes
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.setns.restype = ctypes.c_int
        return libc.setns


def _nstype(fd: int) -> "Optional[int]":
    import fcntl

    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        return None  # ENOTTY: not an nsfs file


def _open(path: str, explicit: bool, log: "_Log") -> "Optional[int]":
    """fd of the mount namespace to join, or None to stay in the current one."""
    source = "KUBENSMNT" if explicit else "Autodetect"
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    except FileNotFoundError:
        if explicit:
            raise Fail(f"KUBENSMNT={path} does not exist (start kubens.service, or unset KUBENSMNT)") from None
        log(VERBOSE, f"Autodetect: no namespace at {path}; running in the current mount namespace")
        return None
    except PermissionError:
        raise Fail(f"cannot open {path}: permission denied (run as root: sudo kubensenter ...)") from None
    except OSError as e:
        raise Fail(f"cannot open {path}: {e.strerror}") from None
    kind = _nstype(fd)
    if kind == CLONE_NEWNS:
        if explicit:
            log(VERBOSE, f"joining the mount namespace at {path} (from KUBENSMNT)")
        else:
            log(DEFAULT, f"Autodetect: kubens.service namespace found at {path}")
        return fd
    posix.close(fd)
    if kind is None:
        # A stale env file must never keep kubelet from starting: warn and carry on.
        log(DEFAULT, f"{source}: {path} is not a mounted namespace; running in the current mount namespace")
        return None
    name = _NS_NAMES.get(kind, hex(kind))
    if explicit:
        raise Fail(
            f"KUBENSMNT={path} is a {name} namespace, not a mount namespace "
            f"(point KUBENSMNT at the kubens pin, e.g. {DEFAULT_KUBENSMNT})"
        )
    log(DEFAULT, f"Autodetect: {path} is a {name} namespace, not a mount namespace; running in the current one")
    return None


def _join(fd: int, path: str, log: "_Log") -> None:
    try:
        if posix.fstat(fd).st_ino == posix.stat("/proc/self/ns/mnt").st_ino:
            log(VERBOSE, f"already in the mount namespace at {path}")
            return
        cwd: Optional[str]
        try:
            cwd = posix.getcwd()
        except OSError:
            cwd = None
        try:
            _setns(fd, path)
        except PermissionError:
            raise Fail(
                f"cannot join the mount namespace at {path}: permission denied (run as root: sudo kubensenter ...)"
            ) from None
        except OSError as e:
            raise Fail(f"cannot join the mount namespace at {path}: {e.strerror}") from None
        # setns(2) moves the working directory to the namespace's root; keep the caller's.
        if cwd is not None:
            try:
                posix.chdir(cwd)
            except OSError:
                log(VERBOSE, f"{cwd} does not exist in the namespace; working directory is /")
    finally:
        posix.close(fd)


def _usage() -> str:
    return (__doc__ or "").split("\n\nThis file", 1)[0].strip() + "\n"


def _parse(argv: "Sequence[str]", log: "_Log") -> "List[str]":
    args = list(argv)
    while args:
        a = args[0]
        if a == "--":
            return args[1:]
        if a in ("-h", "--help"):
            sys.stdout.write(_usage())
            raise SystemExit(0)
        if a in ("-v", "--verbose"):
            log.level += 1
        elif a in ("-q", "--quiet"):
            log.level = QUIET
        elif a.startswith("-") and a != "-":
            raise Fail(f"unknown option {a} (see kubensenter --help)", EXIT_USAGE)
        else:
            return args
        args.pop(0)
    return args


def _env(name: str) -> str:
    value = posix.environ.get(name.encode())
    return value.decode("utf-8", "surrogateescape") if value else ""


def _execvp(file: str, argv: "List[str]") -> "NoReturn":
    """execvp(3) over posix.execv: a name without '/' is looked up in $PATH.

    As execvp(3) does: an error other than "not found" (EACCES: a directory or a file without the x bit)
    is remembered and wins over the ENOENTs of later directories.
    """
    if "/" in file:
        posix.execv(file, argv)
    remembered: Optional[OSError] = None
    last: OSError = FileNotFoundError(2, "No such file or directory", file)
    for d in (_env("PATH") or "/usr/local/bin:/usr/bin:/bin").split(":"):
        try:
            posix.execv(f"{d or '.'}/{file}", argv)
        except (FileNotFoundError, NotADirectoryError) as e:
            last = e
        except OSError as e:
            last = e
            if remembered is None:
                remembered = e
    raise remembered or last


def _exec(command: "List[str]", log: "_Log") -> "NoReturn":
    log(VERBOSE, f"exec {' '.join(command)}")
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        _execvp(command[0], command)
    except FileNotFoundError:
        raise Fail(f"{command[0]}: command not found", EXIT_NOT_FOUND) from None
    except PermissionError:
        raise Fail(f"{command[0]}: permission denied (not executable)", EXIT_NOT_EXECUTABLE) from None
    except OSError as e:
        raise Fail(f"{command[0]}: cannot execute: {e.strerror}", EXIT_NOT_EXECUTABLE) from None


def main(argv: "Optional[Sequence[str]]" = None) -> int:
    try:
        level = int(_env("KUBENSENTER_LOG") or DEFAULT)
    except ValueError:
        level = DEFAULT
    log = _Log(level)
    try:
        command = _parse(sys.argv[1:] if argv is None else argv, log)
        explicit = _env("KUBENSMNT")
        path = explicit or _env("DEFAULT_KUBENSMNT") or DEFAULT_KUBENSMNT
        fd = _open(path, bool(explicit), log)
        if fd is not None:
            _join(fd, path, log)
        if not command:
            command = [_env("SHELL") or "/bin/sh"]
        _exec(command, log)
    except Fail as e:
        sys.stderr.write(f"kubensenter: {e}\n")
        return e.code


if __name__ == "__main__":
    sys.exit(main())

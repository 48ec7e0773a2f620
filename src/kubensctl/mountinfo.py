"""Parser for ``/proc/PID/mountinfo`` (proc(5), "/proc/pid/mountinfo").

Line shape::

    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2) (3)   (4)   (5)      (6)     (7)   (8) (9)    (10)         (11)

Field 7 is zero or more optional fields (``shared:N``, ``master:N``, ``propagate_from:N``,
``unbindable``) ended by a lone ``-``. The kernel escapes space, tab, newline and backslash in paths
as three-digit octal (``\\040``); see ``mangle()``/``seq_escape`` in fs/proc_namespace.c.
"""

from __future__ import annotations

import re
from typing import Iterable, List, NamedTuple, Optional

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """Undo the kernel's octal escapes (``\\040`` -> space, ``\\134`` -> backslash)."""
    if "\\" not in field:
        return field
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def escape(path: str) -> str:
    """The kernel's escaping of a path, for writing fixtures and matching raw lines."""
    out = []
    for ch in path:
        if ch in " \t\n\\":
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return "".join(out)


class Mount(NamedTuple):
    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    options: str
    fstype: str
    source: str
    super_options: str
    shared: Optional[int] = None
    master: Optional[int] = None
    propagate_from: Optional[int] = None
    unbindable: bool = False
    unknown_fields: tuple[str, ...] = ()

    @property
    def propagation(self) -> str:
        """``shared``, ``slave``, ``shared,slave``, ``unbindable`` or ``private`` (as findmnt prints)."""
        kinds = []
        if self.shared is not None:
            kinds.append("shared")
        if self.master is not None:
            kinds.append("slave")
        if self.unbindable:
            kinds.append("unbindable")
        return ",".join(kinds) if kinds else "private"

    @property
    def device(self) -> str:
        return f"{self.major}:{self.minor}"

    def identity(self) -> tuple[str, int, int, str]:
        """What stays the same for one mount seen from two namespaces (mount IDs do not)."""
        return (self.mount_point, self.major, self.minor, self.root)


class ParseError(ValueError):
    pass


def parse_line(line: str) -> Mount:
    parts = line.rstrip("\n").split(" ")
    try:
        sep = parts.index("-", 6)
    except ValueError:
        raise ParseError(f"mountinfo line has no '-' separator: {line!r}") from None
    if len(parts) < sep + 3 or sep < 6:
        raise ParseError(f"mountinfo line is too short: {line!r}")
    try:
        major_s, minor_s = parts[2].split(":", 1)
        mount_id, parent_id, major, minor = int(parts[0]), int(parts[1]), int(major_s), int(minor_s)
    except ValueError:
        raise ParseError(f"mountinfo line has bad numeric fields: {line!r}") from None
    shared = master = propagate_from = None
    unbindable = False
    unknown: list[str] = []
    for opt in parts[6:sep]:
        tag, _, value = opt.partition(":")
        try:
            if tag == "shared":
                shared = int(value)
            elif tag == "master":
                master = int(value)
            elif tag == "propagate_from":
                propagate_from = int(value)
            elif tag == "unbindable":
                unbindable = True
            else:
                unknown.append(opt)
        except ValueError:
            raise ParseError(f"mountinfo optional field {opt!r} is malformed: {line!r}") from None
    # Anything past the super options would be a space inside them, which the kernel never emits.
    return Mount(
        mount_id,
        parent_id,
        major,
        minor,
        unescape(parts[3]),
        unescape(parts[4]),
        parts[5],
        unescape(parts[sep + 1]),
        unescape(parts[sep + 2]),
        " ".join(parts[sep + 3 :]),
        shared,
        master,
        propagate_from,
        unbindable,
        tuple(unknown),
    )


def parse(text: str) -> List[Mount]:
    return [parse_line(line) for line in text.splitlines() if line]


def parse_lines(lines: Iterable[str]) -> List[Mount]:
    return [parse_line(line) for line in lines if line.strip()]


def read(pid: int | str = "self") -> List[Mount]:
    """The mount table of process ``pid`` (its mount namespace, seen from its root)."""
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return parse(f.read())


def find(mounts: Iterable[Mount], mount_point: str) -> Optional[Mount]:
    """The top-most mount at ``mount_point`` (later lines are mounted on top of earlier ones)."""
    found = None
    for m in mounts:
        if m.mount_point == mount_point:
            found = m
    return found

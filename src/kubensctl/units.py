"""systemd unit files: a faithful reader, unit lookup, the effective ExecStart, wrapper drop-ins.

What systemd does, and what this module mirrors (systemd.syntax(7), systemd.unit(5), systemd.service(5)):

* Reading: sections ``[Name]``, ``key=value`` with key and value stripped of whitespace, comment lines
  (``#`` or ``;`` as the first non-blank character), a line ending in an odd number of backslashes continues
  on the next line (the backslash becomes a space, the next line is appended as is), comment lines inside a
  continuation are dropped, an empty line ends it. Keys may repeat; for list settings such as ``ExecStart``
  an empty assignment resets the list.
* Lookup: the system unit search path (``SYSTEM_UNIT_PATH``); the fragment is the first file named like the
  unit (for an instance ``foo@bar.service``, then the template ``foo@.service``); a first match that is
  empty or a symlink to ``/dev/null`` means the unit is masked.
* Drop-ins: for every search directory ``NAME.d/``, the template's ``foo@.service.d/`` and the dash
  prefixes ``foo-bar-.service.d/``, ``foo-.service.d/``; after those, the type-level ``service.d/`` in every
  directory. All ``*.conf`` files of all these directories form one set: a file name seen first (earlier
  directory, more specific name) hides the same name later, and the set is applied sorted by file name,
  whatever directory each file came from.

Every path is taken inside ``root`` (a directory treated as ``/``): absolute symlinks are resolved inside
it too, so a node image can be inspected and changed without touching the host.

Wrapping (``wrap``): a drop-in ``/etc/systemd/system/UNIT.d/99-kubens-wrapper.conf`` resets ``ExecStart``
and repeats every effective command line with ``kubensenter`` in front. The prefixes ``-``, ``:``, ``+``,
``!`` and ``!!`` stay in front of kubensenter, so systemd applies them to the wrapped command as before,
and the command text is copied byte for byte (quoting, ``$VAR``, ``${VAR}``, ``%`` specifiers), so systemd
expands it exactly as it did. The ``@`` prefix cannot stay as it is: with ``@`` systemd passes the word
after the path as argv[0] of the process it starts, which would now be kubensenter, and kubensenter
(RHCOS-compatible, no argv[0] option) execs its COMMAND with argv[0] = COMMAND. So a line
``@PATH NAME ARGS`` becomes::

    KUBENSENTER /bin/bash -c 'exec -a "$$1" "$$0" "$${@:2}"' PATH NAME ARGS

bash's ``exec -a`` then starts PATH with argv[0] = NAME and ARGS, in the namespace kubensenter joined, and
replaces itself (no extra process stays). ``$$`` is systemd's literal dollar; under the ``:`` prefix (no
expansion) a single ``$`` is written. The original text still follows unchanged.
"""

from __future__ import annotations

import argparse
import os
import stat
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from kubensctl.errors import UnitError, UsageError
from kubensctl.fsutil import atomic_write

DEFAULT_KUBENSENTER = "/usr/local/bin/kubensenter"
DEFAULT_DROPIN_NAME = "99-kubens-wrapper.conf"
DEFAULT_DROPIN_DIR = "/etc/systemd/system"
KUBENS_MNT = "/run/kubens/mnt"
# bash, for the ``@`` prefix: ``exec -a`` keeps argv[0] (dash has no ``exec -a``).
ARGV0_SHELL = "/bin/bash"
MARKER = "# Written by kubensctl wrap"

# systemd's system unit search path, highest priority first (systemd.unit(5) "Unit File Load Path";
# ``systemd-analyze --system unit-paths`` on Debian 12 prints exactly this list; /lib and /usr/lib are
# one directory on merged-/usr systems, and on Debian's build /lib comes first).
SYSTEM_UNIT_PATH: Tuple[str, ...] = (
    "/etc/systemd/system.control",
    "/run/systemd/system.control",
    "/run/systemd/transient",
    "/run/systemd/generator.early",
    "/etc/systemd/system",
    "/etc/systemd/system.attached",
    "/run/systemd/system",
    "/run/systemd/system.attached",
    "/run/systemd/generator",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/run/systemd/generator.late",
)

UNIT_TYPES = (
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
)
_WHITESPACE = " \t\n\r"
_COMMENTS = "#;"
_MAX_SYMLINKS = 40


# --------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Assignment:
    """One ``key=value`` line (continuations joined), with where it came from."""

    section: str
    key: str
    value: str
    path: str
    line: int


@dataclass
class UnitFile:
    """A parsed unit file or drop-in: assignments in file order, plus what systemd would warn about."""

    path: str
    assignments: List[Assignment] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def sections(self) -> List[str]:
        seen: List[str] = []
        for a in self.assignments:
            if a.section not in seen:
                seen.append(a.section)
        return seen

    def values(self, section: str, key: str) -> List[str]:
        """Every value assigned to ``key`` in ``section``, in order (empty strings included)."""
        return [a.value for a in self.assignments if a.section == section and a.key == key]


def _split_lines(text: str) -> List[Tuple[int, str]]:
    """Lines ending in ``\\n``, ``\\r\\n`` or ``\\r`` (systemd's read_line), numbered from 1."""
    out: List[Tuple[int, str]] = []
    i, n, lineno = 0, len(text), 1
    while i < n:
        j = i
        while j < n and text[j] not in "\r\n":
            j += 1
        out.append((lineno, text[i:j]))
        lineno += 1
        if j < n and text[j] == "\r" and j + 1 < n and text[j + 1] == "\n":
            j += 1
        i = j + 1
    return out


def _ends_escaped(s: str) -> bool:
    """True when ``s`` ends in an unescaped backslash (an odd run of trailing backslashes)."""
    run = len(s) - len(s.rstrip("\\"))
    return run % 2 == 1


def parse_unit_text(text: str, path: str = "<string>") -> UnitFile:
    """Parse unit-file text as systemd does. Raises UnitError on a broken section header (systemd refuses
    to load such a file); other bad lines are skipped with a warning, as systemd does."""
    unit = UnitFile(path)
    section: Optional[str] = None
    continuation: Optional[str] = None
    cont_line = 0
    lines = _split_lines(text)
    if lines and lines[0][1].startswith("\ufeff"):
        lines[0] = (lines[0][0], lines[0][1][1:])

    def parse_line(lineno: int, raw: str) -> None:
        nonlocal section
        line = raw.strip(_WHITESPACE)
        if not line or line[0] in _COMMENTS:
            return
        if line[0] == "[":
            if line[-1] != "]" or len(line) < 3:
                raise UnitError(
                    f"{path}:{lineno}: invalid section header {line!r}",
                    "fix the unit file: a section header is [Name] on a line of its own",
                )
            section = line[1:-1]
            return
        if "=" not in line:
            unit.warnings.append(f"{path}:{lineno}: missing '=', line ignored")
            return
        if section is None:
            unit.warnings.append(f"{path}:{lineno}: assignment outside of a section, ignored")
            return
        key, _, value = line.partition("=")
        unit.assignments.append(Assignment(section, key.strip(_WHITESPACE), value.strip(_WHITESPACE), path, lineno))

    for lineno, buf in lines:
        first = buf.lstrip(_WHITESPACE)
        if first and first[0] in _COMMENTS:
            continue  # comments, also inside a continuation, are dropped
        if continuation is not None:
            text_so_far = continuation + buf
        else:
            text_so_far = buf
            cont_line = lineno
        if _ends_escaped(text_so_far):
            continuation = text_so_far[:-1] + " "
            continue
        continuation = None
        parse_line(cont_line, text_so_far)
    if continuation is not None:
        parse_line(cont_line, continuation)
    return unit


def read_unit_file(path: str, display: Optional[str] = None) -> UnitFile:
    """Read and parse one file (``display`` is the name used in messages)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_unit_text(f.read(), display or path)


# --------------------------------------------------------------------------------------------- paths


def _host(root: str, path: str) -> str:
    """The host path of an in-root absolute path (no symlink resolution)."""
    if root in ("", "/"):
        return path
    return os.path.join(root, path.lstrip("/"))


def resolve_in_root(root: str, path: str) -> str:
    """Resolve symlinks in the in-root absolute ``path`` as if ``root`` were ``/``; returns an in-root path.

    Missing components are kept as they are (like ``realpath -m``). Loops raise UnitError.
    """
    parts = [p for p in path.split("/") if p]
    done: List[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = "/" + "/".join([*done, part])
        try:
            target = os.readlink(_host(root, candidate))
        except OSError:
            done.append(part)
            continue
        hops += 1
        if hops > _MAX_SYMLINKS:
            raise UnitError(f"too many symlinks resolving {path}", "fix the symlink loop")
        if target.startswith("/"):
            done = []
        parts = [p for p in target.split("/") if p] + parts
    return "/" + "/".join(done)


def _stat(root: str, path: str) -> Optional[os.stat_result]:
    try:
        return os.stat(_host(root, resolve_in_root(root, path)))
    except OSError:
        return None


def _is_masked(root: str, path: str) -> bool:
    """systemd's null_or_empty: a symlink to /dev/null, a character device, or an empty regular file."""
    if resolve_in_root(root, path) == "/dev/null":
        return True
    st = _stat(root, path)
    if st is None:
        return False
    return stat.S_ISCHR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_size == 0)


def _listdir(root: str, directory: str) -> List[str]:
    try:
        return os.listdir(_host(root, resolve_in_root(root, directory)))
    except OSError:
        return []


# --------------------------------------------------------------------------------------------- names


def normalize_unit_name(name: str) -> str:
    """``kubelet`` -> ``kubelet.service``; refuses paths and names systemd would refuse."""
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"invalid unit name {name!r}", "give a unit name such as kubelet.service")
    suffix = name.rsplit(".", 1)[-1] if "." in name else ""
    if suffix not in UNIT_TYPES:
        name = name + ".service"
    if len(name) > 255 or any(c.isspace() or ord(c) < 32 for c in name):
        raise UsageError(f"invalid unit name {name!r}", "give a unit name such as kubelet.service")
    return name


def _split_name(name: str) -> Tuple[str, str]:
    """``foo@bar.service`` -> (``foo@bar``, ``service``)."""
    stem, _, utype = name.rpartition(".")
    return stem, utype


def template_of(name: str) -> Optional[str]:
    """``foo@bar.service`` -> ``foo@.service``; None when ``name`` is not an instance."""
    stem, utype = _split_name(name)
    if "@" not in stem:
        return None
    prefix, _, instance = stem.partition("@")
    if not instance:
        return None
    return f"{prefix}@.{utype}"


def _dash_prefixes(name: str) -> List[str]:
    """``foo-bar-baz.service`` -> [``foo-bar-.service``, ``foo-.service``] (most specific first)."""
    stem, utype = _split_name(name)
    prefix = stem.partition("@")[0]
    out: List[str] = []
    for i in range(len(prefix) - 1, 0, -1):
        if prefix[i] == "-" and i != len(prefix) - 1:
            out.append(f"{prefix[: i + 1]}.{utype}")
    return out


def _dropin_dir_names(name: str) -> List[str]:
    """The name-specific ``.d`` directory names systemd searches in each unit directory, in order."""
    out = [name + ".d"]
    template = template_of(name)
    if template:
        out.append(template + ".d")
        out.extend(p + ".d" for p in _dash_prefixes(template))
    out.extend(p + ".d" for p in _dash_prefixes(name))
    seen: List[str] = []
    for d in out:
        if d not in seen:
            seen.append(d)
    return seen


# --------------------------------------------------------------------------------------------- lookup


@dataclass(frozen=True)
class UnitSources:
    """Where systemd loads a unit from: in-root paths of the fragment and of the drop-ins (applied order)."""

    name: str
    fragment: str
    dropins: Tuple[str, ...]
    names: Tuple[str, ...]
    root: str = "/"


def find_unit(
    unit: str,
    root: str = "/",
    unit_path: Optional[Sequence[str]] = None,
    exclude: Iterable[str] = (),
    extra_dropins: Iterable[str] = (),
) -> UnitSources:
    """Locate ``unit`` (fragment and drop-ins) the way systemd does, inside ``root``.

    ``exclude``: in-root drop-in paths to act as if absent (our own wrapper). ``extra_dropins``: in-root
    paths to act as if present (a wrapper about to be written). Raises UnitError for an unknown or masked
    unit.
    """
    name = normalize_unit_name(unit)
    paths = list(unit_path if unit_path is not None else SYSTEM_UNIT_PATH)
    fragment = None
    candidates = [name]
    template = template_of(name)
    if template:
        candidates.append(template)
    for cand in candidates:
        for d in paths:
            p = f"{d.rstrip('/')}/{cand}"
            if not os.path.lexists(_host(root, resolve_in_root(root, d) + "/" + cand)):
                continue
            if _is_masked(root, p):
                raise UnitError(f"{name} is masked ({p})", f"unmask it first: systemctl unmask {name}")
            st = _stat(root, p)
            if st is None or not stat.S_ISREG(st.st_mode):
                continue
            fragment = p
            break
        if fragment:
            break
    if fragment is None:
        raise UnitError(
            f"unit {name} not found in {len(paths)} unit directories under {root}",
            "check the name with systemctl list-unit-files, or pass --root/--unit-path",
        )
    names = [name]
    target = os.path.basename(resolve_in_root(root, fragment))
    if target != name and target != template and target.endswith("." + _split_name(name)[1]):
        names.append(target)  # an alias: systemd reads drop-ins for every name
    dirs: List[str] = []
    for n in names:
        for d in paths:
            dirs.extend(f"{d.rstrip('/')}/{dn}" for dn in _dropin_dir_names(n))
    utype = _split_name(name)[1]
    dirs.extend(f"{d.rstrip('/')}/{utype}.d" for d in paths)
    excluded = {os.path.normpath(e) for e in exclude}
    extra = [os.path.normpath(e) for e in extra_dropins]
    chosen: Dict[str, str] = {}
    for d in dirs:
        present = [e for e in extra if os.path.dirname(e) == d]
        files = _listdir(root, d) + [os.path.basename(e) for e in present]
        for f in sorted(set(files)):
            if not f.endswith(".conf") or f.startswith(".") or f in chosen:
                continue
            p = f"{d}/{f}"
            if p in excluded:
                continue
            if p not in extra:
                st = _stat(root, p)
                usable = st is not None and (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode))
                if not usable and resolve_in_root(root, p) != "/dev/null":
                    continue
            chosen[f] = p
    dropins = tuple(chosen[f] for f in sorted(chosen))
    return UnitSources(name, fragment, dropins, tuple(names), root)


def _read_source(root: str, path: str, overlay: Mapping[str, str]) -> UnitFile:
    if path in overlay:
        return parse_unit_text(overlay[path], path)
    if _is_masked(root, path):
        return UnitFile(path)
    return read_unit_file(_host(root, resolve_in_root(root, path)), path)


# --------------------------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Word:
    """One word of a command line: unquoted text and its span in the raw value."""

    text: str
    start: int
    end: int


_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "s": " ",
    "\\": "\\", '"': '"', "'": "'",
}  # fmt: skip
_HEX = "0123456789abcdefABCDEF"


def _unescape(value: str, i: int) -> Tuple[str, int]:
    """Decode the C escape at ``value[i]`` (a backslash): (text, length). Unknown escapes keep the
    backslash, as systemd does for command lines (``a\\;b`` stays ``a\\;b``, ``\\ `` joins words)."""
    nxt = value[i + 1]
    if nxt in _ESCAPES:
        return _ESCAPES[nxt], 2
    for letter, digits in (("x", 2), ("u", 4), ("U", 8)):
        hexpart = value[i + 2 : i + 2 + digits]
        if nxt == letter and len(hexpart) == digits and all(h in _HEX for h in hexpart):
            code = int(hexpart, 16)
            if code and code <= 0x10FFFF:
                return chr(code), 2 + digits
    octal = value[i + 1 : i + 4]
    if len(octal) == 3 and all(o in "01234567" for o in octal) and int(octal, 8) not in (0, *range(256, 512)):
        return chr(int(octal, 8)), 4
    return "\\" + nxt, 2


def split_words(value: str, where: str = "") -> List[Word]:
    """Split a command-line value into words (systemd.syntax(7) "Quoting"): whitespace separates, single
    and double quotes group, a backslash escapes the next character (C escapes are decoded)."""
    words: List[Word] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i] in _WHITESPACE:
            i += 1
        if i >= n:
            return words
        start = i
        out: List[str] = []
        quote = ""
        while i < n:
            c = value[i]
            if c == "\\":
                if i + 1 >= n:
                    raise UnitError(f"{where}: trailing backslash in {value!r}", "fix the command line")
                text, length = _unescape(value, i)
                out.append(text)
                i += length
                continue
            if quote:
                if c == quote:
                    quote = ""
                else:
                    out.append(c)
            elif c in "'\"":
                quote = c
            elif c in _WHITESPACE:
                break
            else:
                out.append(c)
            i += 1
        if quote:
            raise UnitError(f"{where}: unbalanced quotes in {value!r}", "fix the quoting in the unit file")
        words.append(Word("".join(out), start, i))


@dataclass(frozen=True)
class ExecCommand:
    """One command line systemd would run.

    ``prefixes``: the special characters in front of the path as written (``-@:+!`` / ``!!``).
    ``raw``: the command text after the prefixes exactly as written (continuations joined).
    ``argv``: the unquoted words (path first; specifiers and variables not expanded).
    """

    prefixes: str
    raw: str
    argv: Tuple[str, ...]
    source: str = ""

    @property
    def line(self) -> str:
        """The value as it would appear after ``ExecStart=``."""
        return self.prefixes + self.raw

    @property
    def path(self) -> str:
        return self.argv[0]


def _take_prefixes(word: str) -> Tuple[str, str]:
    """Split systemd's prefix characters off a first word; returns (prefixes, rest)."""
    prefixes = ""
    seen = set()
    i = 0
    while i < len(word):
        c = word[i]
        if c in "-@:" and c not in seen:
            seen.add(c)
        elif c == "+" and not seen & {"+", "!", "!!"}:
            seen.add("+")
        elif c == "!" and not seen & {"+", "!", "!!"}:
            seen.add("!")
        elif c == "!" and "!" in seen and not seen & {"+", "!!"}:
            seen.add("!!")  # "!!": a second "!" (systemd also accepts other prefixes in between)
        else:
            break
        prefixes += c
        i += 1
    return prefixes, word[i:]


def parse_exec_value(value: str, source: str = "") -> List[ExecCommand]:
    """Parse one ``ExecStart=`` value (not empty) into its command lines (lone ``;`` separates)."""
    words = split_words(value, source)
    groups: List[List[Word]] = [[]]
    for w in words:
        if w.text == ";" and value[w.start : w.end] == ";":
            groups.append([])
        else:
            groups[-1].append(w)
    commands: List[ExecCommand] = []
    for group in groups:
        if not group:
            continue
        first = group[0]
        prefixes, path = _take_prefixes(first.text)
        if not path:
            raise UnitError(f"{source}: empty executable path in {value!r}", "fix the ExecStart= line")
        raw_first = value[first.start : first.end]
        if raw_first.startswith(prefixes):
            raw = value[first.start + len(prefixes) : group[-1].end]
        elif raw_first[:1] in "'\"" and raw_first[1:].startswith(prefixes):
            raw = raw_first[0] + value[first.start + 1 + len(prefixes) : group[-1].end]
        else:
            raise UnitError(f"{source}: cannot separate the prefixes of {raw_first!r}", "write the prefixes unquoted")
        # a lone "\\;" is a literal ";" argument (systemd.service(5) "Command lines")
        argv = (path, *[";" if value[w.start : w.end] == "\\;" else w.text for w in group[1:]])
        if "@" in prefixes and len(argv) < 2:
            raise UnitError(f"{source}: '@' needs an argv[0] word after the path", "fix the ExecStart= line")
        commands.append(ExecCommand(prefixes, raw, argv, source))
    return commands


def effective_exec_start(
    unit: str,
    root: str = "/",
    unit_path: Optional[Sequence[str]] = None,
    exclude: Iterable[str] = (),
    overlay: Optional[Mapping[str, str]] = None,
    key: str = "ExecStart",
) -> List[ExecCommand]:
    """The ExecStart command lines systemd would run for ``unit``: fragment, then drop-ins in order, with
    empty assignments resetting the list. ``exclude``/``overlay`` act as if drop-ins were absent/present
    (overlay maps in-root path -> text)."""
    return _effective(find_unit(unit, root, unit_path, exclude, (overlay or {}).keys()), overlay, key)


def _effective(sources: UnitSources, overlay: Optional[Mapping[str, str]], key: str = "ExecStart") -> List[ExecCommand]:
    commands: List[ExecCommand] = []
    for path in (sources.fragment, *sources.dropins):
        parsed = _read_source(sources.root, path, overlay or {})
        for a in parsed.assignments:
            if a.section != "Service" or a.key != key:
                continue
            if a.value == "":
                commands = []
            else:
                commands.extend(parse_exec_value(a.value, f"{a.path}:{a.line}"))
    return commands


# --------------------------------------------------------------------------------------------- wrapping


def goes_through_kubens(cmd: ExecCommand, kubensenter: str = DEFAULT_KUBENSENTER) -> bool:
    """True when the command already enters the Kubernetes namespace (kubensenter, or nsenter on the pin)."""
    base = os.path.basename(cmd.path)
    if cmd.path == kubensenter or base == "kubensenter":
        return True
    if base != "nsenter":
        return False
    targets = {KUBENS_MNT, "%t/kubens/mnt", "${KUBENSMNT}", "$KUBENSMNT"}
    for arg in cmd.argv[1:]:
        if arg == "--":
            break
        for opt in ("--mount=", "-m"):
            if arg.startswith(opt) and arg[len(opt) :] in targets:
                return True
    return False


def _check_kubensenter_path(kubensenter: str) -> None:
    if not kubensenter.startswith("/") or any(c in kubensenter for c in " \t\n\"'\\$%;"):
        raise UsageError(
            f"kubensenter path {kubensenter!r} must be absolute and free of spaces, quotes, '$' and '%'",
            "pass a plain path such as /usr/local/bin/kubensenter",
        )


def wrap_command(cmd: ExecCommand, kubensenter: str = DEFAULT_KUBENSENTER) -> str:
    """The ``ExecStart=`` value that runs ``cmd`` through kubensenter (see the module notes on ``@``)."""
    if "@" not in cmd.prefixes:
        # a path starting with "-" would read as a kubensenter option
        sep = " -- " if cmd.raw.startswith("-") else " "
        return f"{cmd.prefixes}{kubensenter}{sep}{cmd.raw}"
    dollar = "$" if ":" in cmd.prefixes else "$$"
    script = f'\'exec -a "{dollar}1" "{dollar}0" "{dollar}{{@:2}}"\''
    return f"{cmd.prefixes.replace('@', '')}{kubensenter} {ARGV0_SHELL} -c {script} {cmd.raw}"


def dropin_text(unit: str, values: Sequence[str]) -> str:
    """The wrapper drop-in's text for the given ExecStart values."""
    body = "".join(f"ExecStart={v}\n" for v in values)
    return (
        f"{MARKER}: run {unit} in the Kubernetes mount namespace ({KUBENS_MNT}).\n"
        f"# Remove with: kubensctl unwrap {unit}\n"
        "[Service]\nExecStart=\n" + body
    )


def _executable(root: str, path: str) -> bool:
    host = _host(root, resolve_in_root(root, path))
    return os.path.isfile(host) and os.access(host, os.X_OK)


@dataclass
class UnitChange:
    """What wrap/unwrap did (or would do) to one unit."""

    unit: str
    action: str  # wrapped | updated | unchanged | already-wrapped | removed | absent
    path: str  # the drop-in, in-root
    lines: List[str] = field(default_factory=list)  # ExecStart values in the drop-in
    kept: List[str] = field(default_factory=list)  # commands already in the namespace, left as they are
    removed_stale: bool = False  # already-wrapped: our older drop-in was removed
    warnings: List[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.action in ("wrapped", "updated", "removed") or self.removed_stale

    def describe(self) -> str:
        where = self.path
        if self.action in ("wrapped", "updated"):
            n = len(self.lines)
            text = f"{self.unit}: {self.action} {n} ExecStart line{'s' if n != 1 else ''} in {where}"
        elif self.action == "unchanged":
            text = f"{self.unit}: already wrapped, {where} is up to date"
        elif self.action == "already-wrapped":
            text = f"{self.unit}: every ExecStart already enters the namespace, nothing written"
            if self.removed_stale:
                text += f" (removed the stale {where})"
        elif self.action == "removed":
            text = f"{self.unit}: removed {where}"
        else:
            text = f"{self.unit}: no wrapper drop-in {where}, nothing changed"
        for k in self.kept:
            text += f"\n  left as is (already enters the namespace): {k}"
        for w in self.warnings:
            text += f"\n  warning: {w}"
        return text


@dataclass
class WrapResult:
    """Every unit's change, in the order given; ``changed`` says whether anything was written/removed."""

    changes: List[UnitChange] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(c.changed for c in self.changes)

    def lines(self) -> List[str]:
        return [c.describe() for c in self.changes]


def _dropin_path(unit: str, dropin_dir: str, dropin_name: str) -> str:
    return f"{dropin_dir.rstrip('/')}/{unit}.d/{dropin_name}"


def _check_dropin_name(dropin_name: str) -> None:
    if "/" in dropin_name or dropin_name.startswith(".") or not dropin_name.endswith(".conf"):
        raise UsageError(
            f"invalid drop-in name {dropin_name!r}", "use a file name ending in .conf, e.g. 99-kubens-wrapper.conf"
        )


def _read_ours(root: str, path: str) -> Optional[str]:
    """Our drop-in's current text; None if absent. Refuses to touch a file we did not write."""
    host = _host(root, resolve_in_root(root, path))
    if not os.path.lexists(host):
        return None
    try:
        with open(host, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        raise UnitError(f"cannot read {path}: {e.strerror}", "check the file and its permissions") from e
    if not text.startswith(MARKER):
        raise UnitError(f"{path} exists and was not written by kubensctl", "move it away or pass another --dropin-name")
    return text


@dataclass
class _Plan:
    change: UnitChange
    text: Optional[str]  # None: remove the file (if any); str: write it
    current: Optional[str]


def _plan_wrap(
    unit: str, root: str, kubensenter: str, dropin_name: str, unit_path: Sequence[str], dropin_dir: str
) -> _Plan:
    ours = _dropin_path(unit, dropin_dir, dropin_name)
    current = _read_ours(root, ours)
    # ignore our wrapper under every name of the unit (an alias may have been wrapped too)
    names = find_unit(unit, root, unit_path).names
    sources = find_unit(unit, root, unit_path, exclude=[_dropin_path(n, dropin_dir, dropin_name) for n in names])
    name = sources.name
    commands = _effective(sources, None)
    if not commands:
        raise UnitError(
            f"{name} has no ExecStart= (in {', '.join((sources.fragment, *sources.dropins))})",
            "wrap only services that start a command",
        )
    values: List[str] = []
    kept: List[str] = []
    needs = False
    for cmd in commands:
        if goes_through_kubens(cmd, kubensenter):
            kept.append(cmd.line)
            values.append(cmd.line)
        else:
            needs = True
            if "@" in cmd.prefixes and not _executable(root, ARGV0_SHELL):
                raise UnitError(
                    f"{name}: '@' line needs {ARGV0_SHELL} (exec -a) but it is not executable under {root}",
                    f"install bash or drop the '@' prefix from {cmd.source}",
                )
            values.append(wrap_command(cmd, kubensenter))
    if not needs:
        return _Plan(UnitChange(name, "already-wrapped", ours, [], kept), None, current)
    warnings = _user_warnings(sources, commands, kubensenter)
    text = dropin_text(name, values)
    # What systemd will run once the drop-in is there: a later drop-in must not undo it.
    after_sources = find_unit(unit, root, unit_path, extra_dropins=[ours])
    dropins = list(after_sources.dropins)
    if ours not in dropins:
        shadow = next(d for d in dropins if os.path.basename(d) == dropin_name)
        raise UnitError(
            f"{name}: {shadow} has the same name as {ours} and hides it",
            "pass another --dropin-name",
        )
    after = _effective(after_sources, {ours: text})
    if [c.line for c in after] != values:
        later = [
            d for d in dropins[dropins.index(ours) + 1 :] if _read_source(root, d, {}).values("Service", "ExecStart")
        ]
        raise UnitError(
            f"{name}: another drop-in overrides {ours} ({', '.join(later)})",
            "pass a --dropin-name that sorts after it, or remove its ExecStart=",
        )
    action = "unchanged" if current == text else "wrapped" if current is None else "updated"
    return _Plan(UnitChange(name, action, ours, values, kept, warnings=warnings), text, current)


def _user_warnings(sources: UnitSources, commands: Sequence[ExecCommand], kubensenter: str) -> List[str]:
    """kubensenter needs root (CAP_SYS_ADMIN) to join the namespace: warn when User= would drop it."""
    user = ""
    for path in (sources.fragment, *sources.dropins):
        for value in _read_source(sources.root, path, {}).values("Service", "User"):
            user = value
    if user in ("", "root", "0"):
        return []
    out = []
    for cmd in commands:
        if goes_through_kubens(cmd, kubensenter) or "+" in cmd.prefixes:
            continue
        if "!" in cmd.prefixes and "!!" not in cmd.prefixes:
            continue
        out.append(
            f"runs as User={user}: kubensenter cannot join the namespace without root; "
            f"prefix the line with '+' in the unit ({cmd.source})"
        )
    return out


def wrap(
    units: Sequence[str],
    root: str = "/",
    kubensenter: str = DEFAULT_KUBENSENTER,
    dropin_name: str = DEFAULT_DROPIN_NAME,
    unit_path: Optional[Sequence[str]] = None,
    dropin_dir: str = DEFAULT_DROPIN_DIR,
) -> WrapResult:
    """Write, for each unit, a drop-in running its effective ExecStart lines through kubensenter.

    All units are checked before anything is written: an unknown or masked unit, a unit without ExecStart,
    or a kubensenter that is not executable (looked up inside ``root``) raises UnitError and writes nothing.
    Idempotent: an up-to-date drop-in is left alone and reported ``unchanged``.
    """
    _check_kubensenter_path(kubensenter)
    _check_dropin_name(dropin_name)
    paths = list(unit_path if unit_path is not None else SYSTEM_UNIT_PATH)
    if dropin_dir.rstrip("/") not in [p.rstrip("/") for p in paths]:
        raise UsageError(f"drop-in directory {dropin_dir} is not in the unit search path", "add it with --unit-path")
    if not _executable(root, kubensenter):
        where = "" if root in ("", "/") else f" under {root}"
        raise UnitError(
            f"kubensenter {kubensenter} is not an executable file{where}",
            "install it first with kubensctl install, or pass --kubensenter PATH",
        )
    plans: List[_Plan] = []
    seen: List[str] = []
    for unit in units:
        name = normalize_unit_name(unit)
        if name in seen:
            continue
        seen.append(name)
        if _split_name(name)[1] != "service":
            raise UsageError(f"{name} is not a service", "only .service units have ExecStart=")
        plans.append(_plan_wrap(name, root, kubensenter, dropin_name, paths, dropin_dir))
    result = WrapResult()
    for plan in plans:
        path = plan.change.path
        host = _host(root, resolve_in_root(root, path))
        if plan.text is not None and plan.change.changed:
            os.makedirs(os.path.dirname(host), mode=0o755, exist_ok=True)
            atomic_write(host, plan.text, 0o644)
        elif plan.text is None and plan.current is not None:
            _remove(host)
            plan.change.removed_stale = True
        result.changes.append(plan.change)
    return result


def _remove(host: str) -> None:
    os.unlink(host)
    try:
        os.rmdir(os.path.dirname(host))  # only when empty
    except OSError:
        pass


def unwrap(
    units: Sequence[str],
    root: str = "/",
    dropin_name: str = DEFAULT_DROPIN_NAME,
    dropin_dir: str = DEFAULT_DROPIN_DIR,
) -> WrapResult:
    """Remove our wrapper drop-in from each unit (the unit itself need not exist any more).
    Refuses (nothing removed) when a file of that name was not written by kubensctl."""
    _check_dropin_name(dropin_name)
    plans: List[Tuple[str, str, Optional[str]]] = []
    for unit in units:
        name = normalize_unit_name(unit)
        path = _dropin_path(name, dropin_dir, dropin_name)
        if any(p[0] == name for p in plans):
            continue
        plans.append((name, path, _read_ours(root, path)))
    result = WrapResult()
    for name, path, current in plans:
        if current is None:
            result.changes.append(UnitChange(name, "absent", path))
            continue
        _remove(_host(root, resolve_in_root(root, path)))
        result.changes.append(UnitChange(name, "removed", path))
    return result


# --------------------------------------------------------------------------------------------- CLI


def _unit_path_arg(args: argparse.Namespace) -> Optional[List[str]]:
    paths: Optional[List[str]] = args.unit_path
    if paths:
        for p in paths:
            if not p.startswith("/"):
                raise UsageError(f"--unit-path {p!r} is not absolute", "give directories as seen inside --root")
    return paths or None


def _print_result(result: WrapResult, what: str) -> None:
    for line in result.lines():
        print(line)
    if result.changed:
        print(f"run 'systemctl daemon-reload' and restart the units to {what}")
    else:
        print("nothing changed")


def _cmd_wrap(args: argparse.Namespace) -> int:
    result = wrap(
        args.units,
        root=args.root,
        kubensenter=args.kubensenter,
        dropin_name=args.dropin_name,
        unit_path=_unit_path_arg(args),
    )
    _print_result(result, "apply the wrapper")
    return 0


def _cmd_unwrap(args: argparse.Namespace) -> int:
    result = unwrap(args.units, root=args.root, dropin_name=args.dropin_name)
    _print_result(result, "run them outside the namespace again")
    return 0


def _cmd_exec_start(args: argparse.Namespace) -> int:
    paths = _unit_path_arg(args)
    sources = find_unit(args.unit, args.root, paths)
    commands = _effective(sources, None)
    if args.files:
        print(f"# {sources.fragment}")
        for d in sources.dropins:
            print(f"# {d}")
    if not commands:
        raise UnitError(f"{sources.name} has no ExecStart=", "see systemctl cat " + sources.name)
    for cmd in commands:
        print(cmd.line)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``wrap``, ``unwrap`` and ``exec-start``."""

    def common(p: argparse.ArgumentParser, unit_path: bool = True) -> None:
        p.add_argument("--root", default="/", metavar="DIR", help="treat DIR as / (default /)")
        p.add_argument(
            "--dropin-name",
            default=DEFAULT_DROPIN_NAME,
            metavar="NAME",
            help=f"wrapper drop-in file name (default {DEFAULT_DROPIN_NAME})",
        )
        if unit_path:
            p.add_argument(
                "--unit-path",
                action="append",
                metavar="DIR",
                help="unit directory, highest priority first; repeat to replace systemd's search path",
            )

    p = sub.add_parser(
        "wrap",
        help="run units' ExecStart through kubensenter (writes a drop-in)",
        description="Write a drop-in per unit that resets ExecStart and runs each effective command line "
        "through kubensenter, keeping prefixes, quoting, variables and specifiers. Idempotent.",
    )
    p.add_argument("units", nargs="+", metavar="UNIT")
    common(p)
    p.add_argument(
        "--kubensenter",
        default=DEFAULT_KUBENSENTER,
        metavar="PATH",
        help=f"kubensenter on the node, checked inside --root (default {DEFAULT_KUBENSENTER})",
    )
    p.set_defaults(func=_cmd_wrap)

    p = sub.add_parser("unwrap", help="remove the wrapper drop-in written by wrap")
    p.add_argument("units", nargs="+", metavar="UNIT")
    common(p, unit_path=False)
    p.set_defaults(func=_cmd_unwrap)

    p = sub.add_parser("exec-start", help="print the ExecStart lines systemd would run for a unit")
    p.add_argument("unit", metavar="UNIT")
    p.add_argument("--root", default="/", metavar="DIR", help="treat DIR as / (default /)")
    p.add_argument("--unit-path", action="append", metavar="DIR", help="unit directory (repeatable)")
    p.add_argument("--files", action="store_true", help="also print the fragment and drop-ins read")
    p.set_defaults(func=_cmd_exec_start)

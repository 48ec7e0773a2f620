"""kubensctl.units: unit-file reader, lookup, effective ExecStart, wrap/unwrap.

Temp dirs act as the node's ``/``. Where ``systemd-analyze`` is installed, the same trees are also loaded by
real systemd (``systemd-analyze verify --root`` dumps the loaded unit: fragment, drop-ins in applied order
and each command line), so the answers are judged by systemd itself, not by our reading of the manual.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from kubensctl import units
from kubensctl.errors import KubensError, UnitError, UsageError

KS = units.DEFAULT_KUBENSENTER
ETC = "/etc/systemd/system"
LIB = "/lib/systemd/system"
USR = "/usr/lib/systemd/system"
HAVE_ANALYZE = shutil.which("systemd-analyze") is not None


# ------------------------------------------------------------------------------------------- helpers


def lay(root: Path, path: str, text: str, mode: int = 0o644) -> Path:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    p.chmod(mode)
    return p


def link(root: Path, path: str, target: str) -> None:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, p)


def service(*lines: str, unit_type: str = "") -> str:
    head = f"[Unit]\nDescription=test\n\n[Service]\n{'Type=' + unit_type + chr(10) if unit_type else ''}"
    return head + "".join(line + "\n" for line in lines)


def dropin(*lines: str) -> str:
    return "[Service]\n" + "".join(line + "\n" for line in lines)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    lay(r, KS, '#!/bin/sh\nexec "$@"\n', 0o755)
    lay(r, units.ARGV0_SHELL, "#!/bin/sh\n", 0o755)
    return r


def snapshot(root: Path) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "<dir>"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = os.readlink(p) if os.path.islink(p) else Path(p).read_text()
    return out


def lines(unit: str, root: Path, **kw: object) -> List[str]:
    return [c.line for c in units.effective_exec_start(unit, str(root), **kw)]  # type: ignore[arg-type]


def ours(root: Path, unit: str, name: str = units.DEFAULT_DROPIN_NAME) -> Path:
    return root / f"etc/systemd/system/{unit}.d/{name}"


def exec_values(text: str) -> List[str]:
    return [a.value for a in units.parse_unit_text(text).assignments if a.key == "ExecStart"]


def systemd_view(root: Path, unit: str) -> Tuple[str, List[str], List[List[str]]]:
    """What real systemd loads: (fragment, drop-ins in applied order, argv of each ExecStart command)."""
    if not HAVE_ANALYZE:
        pytest.skip("systemd-analyze not installed")
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="debug", SYSTEMD_LOG_COLOR="0")
    proc = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", unit],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    out = proc.stdout
    block = out.split(f"-> Unit {unit}:", 1)
    if len(block) != 2:
        pytest.fail(f"systemd did not load {unit}: {proc.stderr[-2000:]}")
    text = block[1].split("\n\t-> Unit ", 1)[0]
    fragment = ""
    dropins: List[str] = []
    argvs: List[List[str]] = []
    in_exec_start = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Fragment Path: "):
            fragment = line.split(": ", 1)[1][len(str(root)) :]
        elif line.startswith("DropIn Path: "):
            dropins.append(line.split(": ", 1)[1][len(str(root)) :])
        elif line.startswith("-> "):
            in_exec_start = line == "-> ExecStart:"
        elif in_exec_start and line.startswith("Command Line: "):
            # systemd's dump quotes like C (and writes "$" as "\\$")
            argvs.append([w.text.replace("\\$", "$") for w in units.split_words(line.split(": ", 1)[1])])
    return fragment, dropins, argvs


def specifiers(word: str, unit: str) -> str:
    """The few specifiers the tests use, expanded as systemd does at load time."""
    stem = unit.rsplit(".", 1)[0]
    prefix, _, instance = stem.partition("@")
    table = {"n": unit, "N": stem, "p": prefix, "i": instance, "%": "%"}
    return re.sub(r"%(.)", lambda m: table[m.group(1)], word)


def our_argvs(unit: str, root: Path) -> List[List[str]]:
    """Our reading of the command lines, in the form systemd's dump shows them (argv, specifiers expanded)."""
    out = []
    for c in units.effective_exec_start(unit, str(root)):
        argv = [specifiers(w, unit) for w in c.argv]
        if "@" in c.prefixes:
            argv = argv[1:]  # systemd shows argv: the word after the path replaces it
        out.append(argv)
    return out


# ------------------------------------------------------------------------------------------- parsing


def test_sections_keys_values_and_comments() -> None:
    text = (
        "# comment\n; also a comment\n   # indented comment\n[Unit]\nDescription = a unit  \n"
        "[Service]\nExecStart=/bin/echo a # not a comment ; nor this\n  ;ExecStart=/bin/nope\n"
        "Environment=A=1\nEnvironment=B=2\n"
    )
    u = units.parse_unit_text(text)
    assert u.sections() == ["Unit", "Service"]
    assert u.values("Unit", "Description") == ["a unit"]
    assert u.values("Service", "ExecStart") == ["/bin/echo a # not a comment ; nor this"]
    assert u.values("Service", "Environment") == ["A=1", "B=2"]
    assert u.assignments[1].line == 7


def test_continuation_lines_join_with_a_space_and_keep_text() -> None:
    text = '[Service]\nExecStart=/bin/echo one \\\n    two\\\n"three four"\nUser=x\n'
    assert exec_values(text) == ['/bin/echo one      two "three four"']


def test_comment_lines_inside_a_continuation_are_dropped() -> None:
    text = "[Service]\nExecStart=/bin/echo a \\\n# dropped\n; dropped\n  # dropped\n  b\n"
    assert exec_values(text) == ["/bin/echo a    b"]


def test_empty_line_ends_a_continuation() -> None:
    u = units.parse_unit_text("[Service]\nExecStart=/bin/echo a \\\n\nUser=x\n")
    assert u.values("Service", "ExecStart") == ["/bin/echo a"]
    assert u.values("Service", "User") == ["x"]


def test_even_backslashes_do_not_continue_odd_do() -> None:
    assert exec_values("[Service]\nExecStart=/bin/echo a\\\\\nExecStart=/bin/b\n") == [
        "/bin/echo a\\\\",
        "/bin/b",
    ]
    assert exec_values("[Service]\nExecStart=/bin/echo a\\\\\\\nb\n") == ["/bin/echo a\\\\ b"]


def test_continuation_at_end_of_file_and_crlf_and_bom() -> None:
    assert exec_values("[Service]\nExecStart=/bin/a \\\n") == ["/bin/a"]
    assert exec_values("\ufeff[Service]\r\nExecStart=/bin/a \\\r\n b\r\n") == ["/bin/a   b"]


def test_repeated_keys_and_empty_assignment_kept_in_order() -> None:
    text = "[Service]\nExecStart=/bin/a\nExecStart=\nExecStart=  \nExecStart=/bin/b\n"
    assert exec_values(text) == ["/bin/a", "", "", "/bin/b"]


def test_invalid_section_header_is_an_error_bad_lines_are_warnings() -> None:
    with pytest.raises(UnitError, match="invalid section header"):
        units.parse_unit_text("[Service\nExecStart=/bin/a\n", "x.service")
    u = units.parse_unit_text("ExecStart=/bin/early\n[Service]\njunk line\nExecStart=/bin/a\n")
    assert u.values("Service", "ExecStart") == ["/bin/a"]
    assert len(u.warnings) == 2


# ------------------------------------------------------------------------------------------- commands


@pytest.mark.parametrize(
    ("value", "prefixes", "raw"),
    [
        ("/bin/a x", "", "/bin/a x"),
        ("-/bin/a", "-", "/bin/a"),
        ("@/bin/a name x", "@", "/bin/a name x"),
        (":/bin/a $X", ":", "/bin/a $X"),
        ("+/bin/a", "+", "/bin/a"),
        ("!/bin/a", "!", "/bin/a"),
        ("!!/bin/a", "!!", "/bin/a"),
        ("-@:+/bin/a n", "-@:+", "/bin/a n"),
        ("@-!!/bin/a n", "@-!!", "/bin/a n"),
        (":-!/bin/a", ":-!", "/bin/a"),
        ("!-!/bin/a", "!-!", "/bin/a"),
        ("echo relative", "", "echo relative"),
        ('"-/bin/with space" x', "-", '"/bin/with space" x'),
    ],
)
def test_prefixes_split_from_the_command_text(value: str, prefixes: str, raw: str) -> None:
    (cmd,) = units.parse_exec_value(value)
    assert (cmd.prefixes, cmd.raw) == (prefixes, raw)
    assert cmd.line == prefixes + raw


def test_invalid_prefix_combinations_stay_in_the_path() -> None:
    (cmd,) = units.parse_exec_value("+!/bin/a")  # only one of + ! !!
    assert (cmd.prefixes, cmd.path) == ("+", "!/bin/a")
    (cmd,) = units.parse_exec_value("--/bin/a")
    assert (cmd.prefixes, cmd.path) == ("-", "-/bin/a")


def test_words_quoting_variables_specifiers_kept_raw() -> None:
    value = '/usr/bin/kubelet $KUBELET_ARGS ${EXTRA} --name=%n --inst %i \'a b\' "c \\"d\\"" e\\ f'
    (cmd,) = units.parse_exec_value(value)
    assert cmd.raw == value
    assert cmd.argv == (
        "/usr/bin/kubelet",
        "$KUBELET_ARGS",
        "${EXTRA}",
        "--name=%n",
        "--inst",
        "%i",
        "a b",
        'c "d"',
        "e\\ f",
    )


def test_semicolon_separates_commands_escaped_semicolon_does_not() -> None:
    cmds = units.parse_exec_value('/bin/echo one ; /bin/echo "two two" \\; x;y')
    assert [c.raw for c in cmds] == ["/bin/echo one", '/bin/echo "two two" \\; x;y']
    assert cmds[1].argv == ("/bin/echo", "two two", ";", "x;y")


@pytest.mark.parametrize("value", ["/bin/a 'open", "- /bin/a", "@/bin/a", "/bin/a \\"])
def test_unparseable_command_lines(value: str) -> None:
    with pytest.raises(UnitError):
        units.parse_exec_value(value, "x.service:3")


# ------------------------------------------------------------------------------------------- lookup


def test_unknown_unit(root: Path) -> None:
    with pytest.raises(UnitError, match="not found"):
        units.find_unit("nope.service", str(root))


def test_name_without_suffix_means_service(root: Path) -> None:
    lay(root, f"{LIB}/kubelet.service", service("ExecStart=/usr/bin/kubelet"))
    assert units.find_unit("kubelet", str(root)).name == "kubelet.service"
    with pytest.raises(UsageError):
        units.find_unit("../etc/passwd", str(root))


def test_fragment_is_the_first_in_search_order(root: Path) -> None:
    for i, d in enumerate([USR, LIB, "/usr/local/lib/systemd/system", "/run/systemd/system", ETC]):
        lay(root, f"{d}/k.service", service(f"ExecStart=/bin/echo {i}"))
        assert units.find_unit("k.service", str(root)).fragment == f"{d}/k.service"
        assert lines("k.service", root) == [f"/bin/echo {i}"]
    lay(root, "/run/systemd/system.control/k.service", service("ExecStart=/bin/echo ctl"))
    assert lines("k.service", root) == ["/bin/echo ctl"]


def test_generator_late_is_last_and_transient_before_etc(root: Path) -> None:
    lay(root, "/run/systemd/generator.late/g.service", service("ExecStart=/bin/late"))
    assert lines("g.service", root) == ["/bin/late"]
    lay(root, f"{USR}/g.service", service("ExecStart=/bin/usr"))
    assert lines("g.service", root) == ["/bin/usr"]
    lay(root, "/run/systemd/generator/g.service", service("ExecStart=/bin/gen"))
    assert lines("g.service", root) == ["/bin/gen"]
    lay(root, ETC + "/g.service", service("ExecStart=/bin/etc"))
    assert lines("g.service", root) == ["/bin/etc"]
    lay(root, "/run/systemd/transient/g.service", service("ExecStart=/bin/transient"))
    assert lines("g.service", root) == ["/bin/transient"]


def test_explicit_search_path(root: Path) -> None:
    lay(root, "/a/k.service", service("ExecStart=/bin/a"))
    lay(root, "/b/k.service", service("ExecStart=/bin/b"))
    assert lines("k.service", root, unit_path=["/b", "/a"]) == ["/bin/b"]
    assert lines("k.service", root, unit_path=["/a", "/b"]) == ["/bin/a"]


@pytest.mark.parametrize("how", ["devnull", "empty", "relative-devnull"])
def test_masked_unit(root: Path, how: str) -> None:
    lay(root, f"{LIB}/k.service", service("ExecStart=/bin/a"))
    if how == "empty":
        lay(root, f"{ETC}/k.service", "")
    else:
        link(root, f"{ETC}/k.service", "/dev/null" if how == "devnull" else "../../../dev/null")
    with pytest.raises(UnitError, match="masked"):
        units.find_unit("k.service", str(root))


def test_absolute_symlinks_resolve_inside_root(root: Path) -> None:
    lay(root, "/opt/vendor/k.service", service("ExecStart=/opt/vendor/bin/k"))
    link(root, f"{ETC}/k.service", "/opt/vendor/k.service")
    assert lines("k.service", root) == ["/opt/vendor/bin/k"]


def test_merged_usr_symlink_dir(tmp_path: Path) -> None:
    r = tmp_path / "r"
    lay(r, f"{USR}/k.service", service("ExecStart=/bin/k"))
    lay(r, f"{USR}/k.service.d/10-x.conf", dropin("ExecStart=", "ExecStart=/bin/x"))
    link(r, "/lib", "/usr/lib")  # absolute: must stay inside r
    s = units.find_unit("k.service", str(r))
    assert s.fragment == f"{LIB}/k.service"
    assert s.dropins == (f"{LIB}/k.service.d/10-x.conf",)
    assert lines("k.service", r) == ["/bin/x"]


def test_alias_symlink_reads_dropins_of_both_names(root: Path) -> None:
    lay(root, f"{LIB}/real.service", service("ExecStart=/bin/real"))
    link(root, f"{ETC}/alias.service", f"{LIB}/real.service")
    lay(root, f"{ETC}/real.service.d/10.conf", dropin("ExecStart=/bin/more"))
    s = units.find_unit("alias.service", str(root))
    assert s.names == ("alias.service", "real.service")
    assert lines("alias.service", root) == ["/bin/real", "/bin/more"]


def test_template_instance(root: Path) -> None:
    lay(root, f"{LIB}/agent@.service", service("ExecStart=/usr/bin/agent --id %i --unit %n"))
    lay(root, f"{ETC}/agent@.service.d/10-all.conf", dropin("Environment=X=1"))
    lay(root, f"{ETC}/agent@one.service.d/20-one.conf", dropin("ExecStart=", "ExecStart=/usr/bin/agent-one %i"))
    assert lines("agent@two.service", root) == ["/usr/bin/agent --id %i --unit %n"]
    s = units.find_unit("agent@one.service", str(root))
    assert s.fragment == f"{LIB}/agent@.service"
    assert s.dropins == (f"{ETC}/agent@.service.d/10-all.conf", f"{ETC}/agent@one.service.d/20-one.conf")
    assert lines("agent@one.service", root) == ["/usr/bin/agent-one %i"]
    lay(root, f"{LIB}/agent@three.service", service("ExecStart=/bin/three"))
    assert lines("agent@three.service", root) == ["/bin/three"]


# ------------------------------------------------------------------------------------------- drop-ins


def test_dropins_sorted_by_name_across_directories(root: Path) -> None:
    lay(root, f"{USR}/k.service", service("ExecStart=/bin/base"))
    lay(root, f"{USR}/k.service.d/10-usr.conf", dropin("ExecStart=", "ExecStart=/bin/usr10"))
    lay(root, f"{ETC}/k.service.d/05-etc.conf", dropin("ExecStart=", "ExecStart=/bin/etc05"))
    lay(root, "/run/systemd/system/k.service.d/20-run.conf", dropin("ExecStart=/bin/run20"))
    s = units.find_unit("k.service", str(root))
    assert [os.path.basename(d) for d in s.dropins] == ["05-etc.conf", "10-usr.conf", "20-run.conf"]
    assert lines("k.service", root) == ["/bin/usr10", "/bin/run20"]


def test_same_name_in_earlier_directory_overrides(root: Path) -> None:
    lay(root, f"{USR}/k.service", service("ExecStart=/bin/base"))
    lay(root, f"{USR}/k.service.d/50-x.conf", dropin("ExecStart=", "ExecStart=/bin/usr"))
    lay(root, "/run/systemd/system/k.service.d/50-x.conf", dropin("ExecStart=", "ExecStart=/bin/run"))
    assert lines("k.service", root) == ["/bin/run"]
    lay(root, f"{ETC}/k.service.d/50-x.conf", dropin("ExecStart=", "ExecStart=/bin/etc"))
    assert lines("k.service", root) == ["/bin/etc"]
    assert units.find_unit("k.service", str(root)).dropins == (f"{ETC}/k.service.d/50-x.conf",)


def test_dropin_masked_by_devnull_or_empty_file(root: Path) -> None:
    lay(root, f"{USR}/k.service", service("ExecStart=/bin/base"))
    lay(root, f"{USR}/k.service.d/50-x.conf", dropin("ExecStart=", "ExecStart=/bin/usr"))
    link(root, f"{ETC}/k.service.d/50-x.conf", "/dev/null")
    assert lines("k.service", root) == ["/bin/base"]


def test_non_conf_and_hidden_files_ignored(root: Path) -> None:
    lay(root, f"{USR}/k.service", service("ExecStart=/bin/base"))
    for name in ["50-x.conf~", "50-x.conf.dpkg-old", ".50-x.conf", "README"]:
        lay(root, f"{ETC}/k.service.d/{name}", dropin("ExecStart=", "ExecStart=/bin/bad"))
    (root / ETC.lstrip("/") / "k.service.d/dir.conf").mkdir()
    assert lines("k.service", root) == ["/bin/base"]


def test_type_level_dropins_lose_to_name_specific_of_same_name(root: Path) -> None:
    lay(root, f"{USR}/k.service", service("ExecStart=/bin/base"))
    lay(root, f"{ETC}/service.d/50-all.conf", dropin("ExecStart=", "ExecStart=/bin/all"))
    assert lines("k.service", root) == ["/bin/all"]
    lay(root, f"{USR}/k.service.d/50-all.conf", dropin("Environment=A=1"))  # later dir, but name-specific
    assert lines("k.service", root) == ["/bin/base"]
    lay(root, f"{ETC}/service.d/60-all.conf", dropin("ExecStart=", "ExecStart=/bin/all60"))
    assert lines("k.service", root) == ["/bin/all60"]


def test_dash_prefix_dropins(root: Path) -> None:
    lay(root, f"{USR}/rke2-agent-x.service", service("ExecStart=/bin/base"))
    lay(root, f"{USR}/rke2-.service.d/10.conf", dropin("ExecStart=", "ExecStart=/bin/rke2"))
    assert lines("rke2-agent-x.service", root) == ["/bin/rke2"]
    lay(root, f"{USR}/rke2-agent-.service.d/10.conf", dropin("ExecStart=", "ExecStart=/bin/rke2-agent"))
    assert lines("rke2-agent-x.service", root) == ["/bin/rke2-agent"]  # more specific prefix wins the name
    lay(root, f"{USR}/rke2-agent-x.service.d/10.conf", dropin("ExecStart=", "ExecStart=/bin/own"))
    assert lines("rke2-agent-x.service", root) == ["/bin/own"]
    s = units.find_unit("rke2-agent-x.service", str(root))
    assert s.dropins == (f"{USR}/rke2-agent-x.service.d/10.conf",)


def test_reset_in_dropin_then_append(root: Path) -> None:
    lay(root, f"{USR}/k.service", service("ExecStart=/bin/a", "ExecStart=/bin/b", unit_type="oneshot"))
    lay(root, f"{ETC}/k.service.d/10.conf", dropin("ExecStart=/bin/c"))
    assert lines("k.service", root) == ["/bin/a", "/bin/b", "/bin/c"]
    lay(root, f"{ETC}/k.service.d/20.conf", dropin("ExecStart=", "ExecStart=/bin/d"))
    assert lines("k.service", root) == ["/bin/d"]
    lay(root, f"{ETC}/k.service.d/30.conf", dropin("ExecStart="))
    assert lines("k.service", root) == []


def test_exec_start_in_other_sections_is_ignored(root: Path) -> None:
    lay(
        root,
        f"{USR}/k.service",
        "[Unit]\nExecStart=/bin/no\n[X-Mine]\nExecStart=/bin/no\n[Service]\nExecStart=/bin/yes\n",
    )
    assert lines("k.service", root) == ["/bin/yes"]


# ------------------------------------------------------------------------------------------- real systemd


def _messy_tree(root: Path) -> str:
    unit = "kube-let-x.service"
    lay(
        root,
        f"{USR}/{unit}",
        service(
            "ExecStart=/usr/bin/kubelet $KUBELET_ARGS \\",
            "# a comment inside",
            "    ${EXTRA} --name=%n 'a b' \"c d\"",
            "ExecStart=-@/bin/echo argv0 --x \\; ; /bin/true",
            unit_type="oneshot",
        ),
    )
    for d in [ETC, "/etc/systemd/system.control", "/run/systemd/system", LIB, USR, "/usr/local/lib/systemd/system"]:
        tag = d.strip("/").replace("/", "_")
        lay(root, f"{d}/{unit}.d/{tag}.conf", dropin(f"ExecStart=/bin/echo {tag}"))
        lay(root, f"{d}/kube-.service.d/same.conf", dropin(f"ExecStart=/bin/echo dash-{tag}"))
        lay(root, f"{d}/kube-let-.service.d/same.conf", dropin(f"ExecStart=/bin/echo dash2-{tag}"))
        lay(root, f"{d}/service.d/t-{tag}.conf", dropin("Environment=A=1"))
    lay(root, f"{ETC}/service.d/zz.conf", dropin("ExecStart=!!/bin/echo type-level %p"))
    lay(root, f"{USR}/{unit}.d/zz.conf", dropin("ExecStart=:/bin/echo specific $X"))
    link(root, f"/run/systemd/system/{unit}.d/mm.conf", "/dev/null")
    lay(root, f"{USR}/{unit}.d/mm.conf", dropin("ExecStart=", "ExecStart=/bin/masked"))
    return unit


@pytest.mark.skipif(not HAVE_ANALYZE, reason="systemd-analyze not installed")
def test_lookup_and_commands_match_real_systemd(root: Path) -> None:
    unit = _messy_tree(root)
    fragment, dropins, argvs = systemd_view(root, unit)
    ours_s = units.find_unit(unit, str(root))
    assert (ours_s.fragment, list(ours_s.dropins)) == (fragment, dropins)
    assert our_argvs(unit, root) == argvs
    assert len(argvs) >= 3


@pytest.mark.skipif(not HAVE_ANALYZE, reason="systemd-analyze not installed")
def test_wrapped_result_matches_real_systemd(root: Path) -> None:
    unit = _messy_tree(root)
    before = our_argvs(unit, root)
    with pytest.raises(UnitError, match=r"overrides .*99-kubens-wrapper.conf \(.*/same.conf, .*/zz.conf\)"):
        units.wrap([unit], str(root))  # zz.conf and same.conf sort after 99-… and set ExecStart
    units.wrap([unit], str(root), dropin_name="zzz-kubens.conf")
    _, dropins, argvs = systemd_view(root, unit)
    assert dropins[-1] == f"{ETC}/{unit}.d/zzz-kubens.conf"
    assert len(argvs) == len(before)
    commands = units.effective_exec_start(unit, str(root), exclude=[f"{ETC}/{unit}.d/zzz-kubens.conf"])
    for cmd, want, got in zip(commands, before, argvs):
        if "@" in cmd.prefixes:
            assert got[:3] == [KS, units.ARGV0_SHELL, "-c"]
            assert got[4] == specifiers(cmd.path, unit)
            assert got[5:] == want
        else:
            assert got == [KS, specifiers(cmd.path, unit), *want[1:]]


TRICKY = [
    "/bin/echo plain",
    "-/bin/echo \"double q\" 'single q' back\\slash e\\ sc",
    "@/bin/echo argv0 rest %n %i %%",
    ":/bin/echo $A ${B} x${C}y",
    "!!/bin/echo a\\;b \\; ; +/bin/echo second",
    "/bin/echo 'quoted \\'inner\\'' \"tab\\there\"",
    "echo relative",
    '/bin/echo \\x41\\101\\u00e9 \\q a$$b "$$"',
    "\"-@/bin/echo\" zero 'one two'",
    "/bin/echo trailing\\\\ \\\\",
]


@pytest.mark.skipif(not HAVE_ANALYZE, reason="systemd-analyze not installed")
@pytest.mark.parametrize("value", TRICKY)
def test_command_words_match_real_systemd(root: Path, value: str) -> None:
    unit = "tricky@inst.service"
    lay(root, f"{USR}/tricky@.service", service(f"ExecStart={value}", unit_type="oneshot"))
    lay(root, "/bin/echo", "#!/bin/sh\n", 0o755)
    assert our_argvs(unit, root) == systemd_view(root, unit)[2]
    units.wrap([unit], str(root))
    before = units.effective_exec_start(unit, str(root), exclude=[f"{ETC}/{unit}.d/{units.DEFAULT_DROPIN_NAME}"])
    after = systemd_view(root, unit)[2]
    assert len(after) == len(before)
    for cmd, got in zip(before, after):
        want = [specifiers(w, unit) for w in cmd.argv]
        if "@" in cmd.prefixes:
            assert got[:3] == [KS, units.ARGV0_SHELL, "-c"] and got[4:] == want
        else:
            assert got == [KS, *want]


@pytest.mark.skipif(not HAVE_ANALYZE, reason="systemd-analyze not installed")
def test_template_dropins_match_real_systemd(root: Path) -> None:
    lay(root, f"{USR}/a-b@.service", service("ExecStart=/bin/t %i", unit_type="oneshot"))
    for d in ["a-b@.service.d", "a-b@x.service.d", "a-.service.d"]:
        lay(root, f"{USR}/{d}/10.conf", dropin(f"ExecStart=/bin/echo {d}"))
        lay(root, f"{USR}/{d}/{d}.conf", dropin(f"ExecStart=/bin/echo {d}"))
    lay(root, f"{ETC}/a-.service.d/a-.service.d.conf", "")  # an empty file masks the name
    fragment, dropins, argvs = systemd_view(root, "a-b@x.service")
    s = units.find_unit("a-b@x.service", str(root))
    assert (s.fragment, list(s.dropins)) == (fragment, dropins)
    assert our_argvs("a-b@x.service", root) == argvs


@pytest.mark.skipif(not HAVE_ANALYZE, reason="systemd-analyze not installed")
def test_empty_fragment_is_masked_for_systemd_too(root: Path) -> None:
    lay(root, f"{USR}/e.service", service("ExecStart=/bin/true"))
    lay(root, f"{ETC}/e.service", "")
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="info")
    proc = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "e.service"], capture_output=True, text=True, env=env
    )
    assert "masked" in proc.stderr
    with pytest.raises(UnitError, match="masked"):
        units.find_unit("e.service", str(root))


# ------------------------------------------------------------------------------------------- wrapping


def test_wrap_writes_reset_and_wrapped_line(root: Path) -> None:
    lay(root, f"{USR}/kubelet.service", service("ExecStart=/usr/bin/kubelet $KUBELET_ARGS"))
    result = units.wrap(["kubelet"], str(root))
    assert result.changed
    (change,) = result.changes
    assert change.action == "wrapped"
    assert change.path == f"{ETC}/kubelet.service.d/99-kubens-wrapper.conf"
    text = ours(root, "kubelet.service").read_text()
    assert text.startswith(units.MARKER)
    assert "[Service]\nExecStart=\nExecStart=/usr/local/bin/kubensenter /usr/bin/kubelet $KUBELET_ARGS\n" in text
    assert lines("kubelet.service", root) == [f"{KS} /usr/bin/kubelet $KUBELET_ARGS"]
    assert oct(ours(root, "kubelet.service").stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("prefix", ["-", ":", "+", "!", "!!", "-+", ":-!!", "!-!"])
def test_prefixes_stay_in_front_of_kubensenter(root: Path, prefix: str) -> None:
    lay(root, f"{USR}/k.service", service(f"ExecStart={prefix}/usr/bin/crio --x ${{A}} $B %n"))
    units.wrap(["k"], str(root))
    assert lines("k.service", root) == [f"{prefix}{KS} /usr/bin/crio --x ${{A}} $B %n"]


def test_command_text_kept_byte_for_byte(root: Path) -> None:
    raw = '/usr/bin/containerd --config "/etc/my dir/c.toml" \'x  y\' e\\ f $V ${W}x %i%% --a=\\"q\\"'
    lay(root, f"{USR}/c.service", service(f"ExecStart={raw}"))
    units.wrap(["c.service"], str(root))
    assert exec_values(ours(root, "c.service").read_text()) == ["", f"{KS} {raw}"]


def test_continuation_lines_joined_in_the_wrapper(root: Path) -> None:
    lay(root, f"{USR}/c.service", service("ExecStart=/usr/bin/k3s \\", "  server \\", "# note", "  --flag"))
    units.wrap(["c"], str(root))
    assert exec_values(ours(root, "c.service").read_text())[1] == f"{KS} /usr/bin/k3s    server    --flag"
    assert "\\\n" not in ours(root, "c.service").read_text()


def test_at_prefix_keeps_argv0_through_bash(root: Path) -> None:
    lay(root, f"{USR}/a.service", service("ExecStart=-@/usr/bin/agent my-agent --v=2 $ARGS"))
    lay(root, f"{USR}/b.service", service("ExecStart=:@/usr/bin/agent my-agent --v=2 $ARGS"))
    units.wrap(["a", "b"], str(root))
    assert lines("a.service", root) == [
        f'-{KS} /bin/bash -c \'exec -a "$$1" "$$0" "$${{@:2}}"\' /usr/bin/agent my-agent --v=2 $ARGS'
    ]
    assert lines("b.service", root) == [
        f':{KS} /bin/bash -c \'exec -a "$1" "$0" "${{@:2}}"\' /usr/bin/agent my-agent --v=2 $ARGS'
    ]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_at_prefix_wrapped_line_really_runs_with_argv0(tmp_path: Path) -> None:
    """Run the wrapped argv the way systemd would ($$ -> $) through a kubensenter stand-in."""
    fake = lay(tmp_path, "/kubensenter", '#!/bin/sh\nexec "$@"\n', 0o755)
    cmd = units.parse_exec_value("@/bin/cat my-cat /proc/self/cmdline '/dev/null' ")[0]
    wrapped = units.wrap_command(cmd, str(fake)).replace("/bin/bash", shutil.which("bash") or "")
    (w,) = units.parse_exec_value(wrapped)
    argv = [a.replace("$$", "$") for a in w.argv]
    out = subprocess.run(argv, capture_output=True, check=True).stdout
    assert out.split(b"\0")[:3] == [b"my-cat", b"/proc/self/cmdline", b"/dev/null"]


def test_path_that_looks_like_an_option_gets_double_dash() -> None:
    (cmd,) = units.parse_exec_value("--/bin/odd x")
    assert units.wrap_command(cmd) == f"-{KS} -- -/bin/odd x"


def test_multi_exec_start_oneshot_each_line_wrapped(root: Path) -> None:
    lay(
        root,
        f"{USR}/o.service",
        service("ExecStart=/bin/echo one", "ExecStart=-/bin/echo two ; /bin/echo 'three 3'", unit_type="oneshot"),
    )
    units.wrap(["o"], str(root))
    assert lines("o.service", root) == [
        f"{KS} /bin/echo one",
        f"-{KS} /bin/echo two",
        f"{KS} /bin/echo 'three 3'",
    ]


def test_effective_command_from_dropins_is_what_gets_wrapped(root: Path) -> None:
    lay(root, f"{USR}/kubelet.service", service("ExecStart=/usr/bin/kubelet"))
    lay(
        root,
        f"{USR}/kubelet.service.d/10-kubeadm.conf",
        dropin(
            "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env",
            "ExecStart=",
            "ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS",
        ),
    )
    units.wrap(["kubelet"], str(root))
    assert lines("kubelet.service", root) == [
        f"{KS} /usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS"
    ]


def test_idempotent_and_earlier_wrapper_ignored(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lay(root, f"{USR}/crio.service", service("ExecStart=/usr/bin/crio $CRIO_OPTS"))
    first = units.wrap(["crio"], str(root))
    before = snapshot(root)
    second = units.wrap(["crio"], str(root))
    assert first.changed and not second.changed
    assert second.changes[0].action == "unchanged"
    assert snapshot(root) == before
    assert lines("crio.service", root) == [f"{KS} /usr/bin/crio $CRIO_OPTS"]  # not wrapped twice
    # the package changes its command: wrap follows (our old drop-in does not count)
    lay(root, f"{USR}/crio.service", service("ExecStart=/usr/bin/crio --new"))
    third = units.wrap(["crio"], str(root))
    assert third.changes[0].action == "updated"
    assert lines("crio.service", root) == [f"{KS} /usr/bin/crio --new"]


def test_already_in_namespace_lines_not_wrapped(root: Path) -> None:
    lay(root, f"{USR}/a.service", service("ExecStart=/usr/local/bin/kubensenter /usr/bin/kubelet"))
    lay(root, f"{USR}/b.service", service("ExecStart=-/usr/bin/nsenter --mount=/run/kubens/mnt /usr/bin/crio"))
    lay(root, f"{USR}/c.service", service("ExecStart=/usr/bin/nsenter -m/run/kubens/mnt -- /bin/x"))
    lay(root, f"{USR}/d.service", service("ExecStart=/usr/bin/nsenter --mount=${KUBENSMNT} /bin/x"))
    before = snapshot(root)
    result = units.wrap(["a", "b", "c", "d"], str(root))
    assert not result.changed
    assert [c.action for c in result.changes] == ["already-wrapped"] * 4
    assert snapshot(root) == before
    assert "already enters the namespace" in result.lines()[1]


def test_nsenter_into_another_namespace_is_wrapped(root: Path) -> None:
    lay(root, f"{USR}/n.service", service("ExecStart=/usr/bin/nsenter --mount=/proc/1/ns/mnt /bin/x"))
    assert units.wrap(["n"], str(root)).changed


def test_mixed_lines_keep_the_wrapped_ones(root: Path) -> None:
    lay(
        root,
        f"{USR}/m.service",
        service("ExecStart=/usr/local/bin/kubensenter /bin/one", "ExecStart=/bin/two", unit_type="oneshot"),
    )
    result = units.wrap(["m"], str(root))
    assert lines("m.service", root) == [f"{KS} /bin/one", f"{KS} /bin/two"]
    assert result.changes[0].kept == [f"{KS} /bin/one"]


def test_stale_wrapper_removed_when_another_dropin_already_wraps(root: Path) -> None:
    lay(root, f"{USR}/k.service", service("ExecStart=/bin/k"))
    units.wrap(["k"], str(root))
    lay(root, f"{ETC}/k.service.d/50-admin.conf", dropin("ExecStart=", f"ExecStart={KS} /bin/k --admin"))
    result = units.wrap(["k"], str(root))
    assert result.changed and result.changes[0].removed_stale
    assert not ours(root, "k.service").exists()
    assert lines("k.service", root) == [f"{KS} /bin/k --admin"]


def test_warns_when_user_drops_root(root: Path) -> None:
    lay(root, f"{USR}/u.service", service("User=nobody", "ExecStart=/bin/u"))
    lay(root, f"{USR}/p.service", service("User=nobody", "ExecStart=+/bin/p"))
    result = units.wrap(["u", "p"], str(root))
    assert "warning: runs as User=nobody" in result.changes[0].describe()
    assert result.changes[1].warnings == []


def test_custom_kubensenter_and_dropin_name(root: Path) -> None:
    lay(root, "/opt/bin/ke", "#!/bin/sh\n", 0o755)
    lay(root, f"{USR}/k.service", service("ExecStart=/bin/k"))
    units.wrap(["k"], str(root), kubensenter="/opt/bin/ke", dropin_name="90-ns.conf")
    assert ours(root, "k.service", "90-ns.conf").exists()
    assert lines("k.service", root) == ["/opt/bin/ke /bin/k"]
    assert units.wrap(["k"], str(root), kubensenter="/opt/bin/ke", dropin_name="90-ns.conf").changed is False


def test_template_instance_wrap(root: Path) -> None:
    lay(root, f"{LIB}/agent@.service", service("ExecStart=/usr/bin/agent %i"))
    units.wrap(["agent@a.service"], str(root))
    assert ours(root, "agent@a.service").exists()
    assert lines("agent@a.service", root) == [f"{KS} /usr/bin/agent %i"]
    assert lines("agent@b.service", root) == ["/usr/bin/agent %i"]


# ------------------------------------------------------------------------------------------- errors


def _expect_nothing_written(root: Path, exc: type, match: str, *args: object, **kw: object) -> None:
    before = snapshot(root)
    with pytest.raises(exc, match=match) as info:
        units.wrap(*args, **kw)  # type: ignore[arg-type]
    assert snapshot(root) == before
    assert isinstance(info.value, KubensError) and info.value.hint
    assert "\n" not in info.value.line()


def test_error_unknown_unit_nothing_written(root: Path) -> None:
    lay(root, f"{USR}/good.service", service("ExecStart=/bin/good"))
    _expect_nothing_written(root, UnitError, "not found", ["good", "missing"], str(root))


def test_error_masked_unit_nothing_written(root: Path) -> None:
    lay(root, f"{USR}/good.service", service("ExecStart=/bin/good"))
    lay(root, f"{USR}/m.service", service("ExecStart=/bin/m"))
    link(root, f"{ETC}/m.service", "/dev/null")
    _expect_nothing_written(root, UnitError, "masked", ["good", "m"], str(root))


def test_error_no_exec_start_nothing_written(root: Path) -> None:
    lay(root, f"{USR}/good.service", service("ExecStart=/bin/good"))
    lay(root, f"{USR}/n.service", service("ExecStop=/bin/stop", "RemainAfterExit=yes", unit_type="oneshot"))
    _expect_nothing_written(root, UnitError, "no ExecStart", ["good", "n"], str(root))
    lay(root, f"{USR}/r.service", service("ExecStart=/bin/r"))
    lay(root, f"{ETC}/r.service.d/10.conf", dropin("ExecStart="))
    _expect_nothing_written(root, UnitError, "no ExecStart", ["good", "r"], str(root))


def test_error_kubensenter_not_executable_inside_root(root: Path) -> None:
    lay(root, f"{USR}/good.service", service("ExecStart=/bin/good"))
    (root / KS.lstrip("/")).chmod(0o644)
    _expect_nothing_written(root, UnitError, "not an executable", ["good"], str(root))
    (root / KS.lstrip("/")).unlink()
    # present on the host (/bin/sh) is not enough: with a root, the path is looked up inside it
    _expect_nothing_written(root, UnitError, "not an executable", ["good"], str(root), kubensenter="/bin/sh")


def test_error_at_prefix_without_bash(root: Path) -> None:
    (root / units.ARGV0_SHELL.lstrip("/")).unlink()
    lay(root, f"{USR}/a.service", service("ExecStart=@/bin/a name"))
    _expect_nothing_written(root, UnitError, "bash", ["a"], str(root))


def test_error_bad_arguments(root: Path) -> None:
    lay(root, f"{USR}/good.service", service("ExecStart=/bin/good"))
    lay(root, f"{USR}/s.socket", "[Socket]\nListenStream=1\n")
    _expect_nothing_written(root, UsageError, "not a service", ["good", "s.socket"], str(root))
    _expect_nothing_written(root, UsageError, "kubensenter path", ["good"], str(root), kubensenter="kubensenter")
    _expect_nothing_written(root, UsageError, "drop-in name", ["good"], str(root), dropin_name="x/y.conf")
    _expect_nothing_written(root, UsageError, "drop-in name", ["good"], str(root), dropin_name="x.txt")
    _expect_nothing_written(root, UsageError, "search path", ["good"], str(root), unit_path=[USR])


def test_error_unparseable_exec_start_nothing_written(root: Path) -> None:
    lay(root, f"{USR}/q.service", service("ExecStart=/bin/q 'unbalanced"))
    _expect_nothing_written(root, UnitError, "unbalanced", ["q"], str(root))


def test_error_foreign_file_at_our_path(root: Path) -> None:
    lay(root, f"{USR}/k.service", service("ExecStart=/bin/k"))
    lay(root, f"{ETC}/k.service.d/99-kubens-wrapper.conf", dropin("Environment=MINE=1"))
    _expect_nothing_written(root, UnitError, "not written by kubensctl", ["k"], str(root))
    with pytest.raises(UnitError, match="not written by kubensctl"):
        units.unwrap(["k"], str(root))


def test_error_later_dropin_would_override_ours(root: Path) -> None:
    lay(root, f"{USR}/k.service", service("ExecStart=/bin/k"))
    lay(root, f"{ETC}/k.service.d/zz-late.conf", dropin("ExecStart=", "ExecStart=/bin/late"))
    _expect_nothing_written(root, UnitError, "overrides", ["k"], str(root))
    assert units.wrap(["k"], str(root), dropin_name="zzz-kubens.conf").changed


def test_error_same_named_dropin_in_higher_priority_dir(root: Path) -> None:
    lay(root, f"{USR}/k.service", service("ExecStart=/bin/k"))
    lay(root, f"/run/systemd/system.control/k.service.d/{units.DEFAULT_DROPIN_NAME}", dropin("CPUWeight=10"))
    _expect_nothing_written(root, UnitError, "hides it", ["k"], str(root))


def test_wrapping_alias_and_target_both(root: Path) -> None:
    lay(root, f"{LIB}/real.service", service("ExecStart=/bin/real"))
    link(root, f"{ETC}/alias.service", f"{LIB}/real.service")
    units.wrap(["alias"], str(root))
    result = units.wrap(["real", "alias"], str(root))
    assert [c.action for c in result.changes] == ["wrapped", "unchanged"]
    assert lines("alias.service", root) == [f"{KS} /bin/real"]


# ------------------------------------------------------------------------------------------- unwrap


def test_unwrap_removes_only_ours_and_is_idempotent(root: Path) -> None:
    lay(root, f"{USR}/k.service", service("ExecStart=/bin/k"))
    lay(root, f"{ETC}/j.service.d/10-admin.conf", dropin("Environment=A=1"))
    lay(root, f"{USR}/j.service", service("ExecStart=/bin/j"))
    units.wrap(["k", "j"], str(root))
    result = units.unwrap(["k", "j"], str(root))
    assert [c.action for c in result.changes] == ["removed", "removed"]
    assert not (root / "etc/systemd/system/k.service.d").exists()  # emptied dir removed
    assert (root / "etc/systemd/system/j.service.d/10-admin.conf").exists()
    assert lines("k.service", root) == ["/bin/k"]
    again = units.unwrap(["k", "j", "gone.service"], str(root))
    assert not again.changed
    assert [c.action for c in again.changes] == ["absent"] * 3


# ------------------------------------------------------------------------------------------- CLI


def _run(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="kubensctl")
    sub = parser.add_subparsers(dest="command")
    units.add_commands(sub)
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


def test_cli_wrap_twice_exec_start_unwrap(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lay(root, f"{USR}/kubelet.service", service("ExecStart=/usr/bin/kubelet $ARGS"))
    assert _run(["wrap", "kubelet", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "kubelet.service: wrapped 1 ExecStart line in /etc/systemd/system/kubelet.service.d/" in out
    assert "daemon-reload" in out
    assert _run(["wrap", "kubelet.service", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "nothing changed" in out and "already wrapped, " in out and "up to date" in out
    assert _run(["exec-start", "kubelet", "--root", str(root), "--files"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing == [
        f"# {USR}/kubelet.service",
        f"# {ETC}/kubelet.service.d/99-kubens-wrapper.conf",
        f"{KS} /usr/bin/kubelet $ARGS",
    ]
    assert _run(["unwrap", "kubelet", "--root", str(root)]) == 0
    assert "removed" in capsys.readouterr().out
    assert _run(["unwrap", "kubelet", "--root", str(root)]) == 0
    assert "nothing changed" in capsys.readouterr().out


def test_cli_unit_path_and_errors(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lay(root, "/units/x.service", service("ExecStart=/bin/x"))
    assert _run(["exec-start", "x", "--root", str(root), "--unit-path", "/units"]) == 0
    assert capsys.readouterr().out == "/bin/x\n"
    with pytest.raises(UsageError):
        _run(["exec-start", "x", "--root", str(root), "--unit-path", "units"])
    assert _run(["wrap", "x", "--root", str(root), "--unit-path", ETC, "--unit-path", "/units"]) == 0
    with pytest.raises(UnitError):
        _run(["wrap", "nope", "--root", str(root)])
    lay(root, "/units/y.service", service("ExecStop=/bin/y"))
    with pytest.raises(UnitError, match="no ExecStart"):
        _run(["exec-start", "y", "--root", str(root), "--unit-path", "/units"])


def test_cli_is_registered_in_rooms() -> None:
    from kubensctl import cli

    assert "kubensctl.units" in cli.ROOMS


def test_resolve_in_root_never_escapes(tmp_path: Path) -> None:
    r = tmp_path / "r"
    link(r, "/a", "../../../../..")
    link(r, "/b", "/a/etc")
    assert units.resolve_in_root(str(r), "/b/x") == "/etc/x"
    link(r, "/loop", "/loop")
    with pytest.raises(UnitError):
        units.resolve_in_root(str(r), "/loop/x")


def test_host_paths_without_root(tmp_path: Path) -> None:
    lay(tmp_path, "/u/k.service", service("ExecStart=/bin/k"))
    got = units.effective_exec_start("k", "/", unit_path=[str(tmp_path / "u")])
    assert [c.line for c in got] == ["/bin/k"]


def test_unit_file_reader_on_disk(tmp_path: Path) -> None:
    p = lay(tmp_path, "/x.service", service("ExecStart=/bin/x"))
    u = units.read_unit_file(str(p))
    assert u.values("Service", "ExecStart") == ["/bin/x"]
    assert u.path == str(p)

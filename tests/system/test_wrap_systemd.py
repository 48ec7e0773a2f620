"""``kubensctl wrap`` judged by a real, booted systemd (Debian 12, systemd 252) on the test node.

Each test lays sample units of one shape under /usr/lib/systemd/system (where a package puts them), wraps
them with ``kubensctl wrap``, reloads systemd and checks what systemd loaded (``systemctl show -p
ExecStartEx``: path, argv and prefix flags) and what actually ran when the unit was started (outputs,
argv[0], user, main PID). Units are named ``kwt…`` and removed afterwards.

The ``node`` fixture comes from tests/system/conftest.py: ``node.run(cmd, check=True, input=None)`` runs a
command inside the node and returns a ``CompletedProcess[str]``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from typing import Any, Dict, Iterator, List

import pytest

pytestmark = pytest.mark.requires_node

SRC = "/opt/kubensctl/src"
KS = "/usr/local/bin/kubensenter"
VENDOR = "/usr/lib/systemd/system"
OUT = "/run/kwt"
RECORDER = "/usr/local/lib/kwt/kubensenter-rec"
DROPIN = "99-kubens-wrapper.conf"


def put(node: Any, path: str, text: str, mode: str = "0644") -> None:
    q = shlex.quote(path)
    node.run(["sh", "-c", f'mkdir -p "$(dirname {q})" && cat > {q} && chmod {mode} {q}'], input=text)


def kubensctl(node: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cp: subprocess.CompletedProcess[str] = node.run(
        ["env", f"PYTHONPATH={SRC}", "python3", "-m", "kubensctl", *args], check=check
    )
    return cp


def sh(node: Any, script: str, check: bool = True) -> str:
    out: str = node.run(["sh", "-c", script], check=check).stdout
    return out


def unit(node: Any, name: str, *service_lines: str, where: str = VENDOR) -> None:
    body = "[Unit]\nDescription=kubensctl wrap test\n\n[Service]\n" + "".join(f"{x}\n" for x in service_lines)
    put(node, f"{where}/{name}", body)


def reload(node: Any) -> None:
    node.run(["systemctl", "daemon-reload"])


def exec_start(node: Any, name: str) -> List[Dict[str, str]]:
    """systemd's loaded ExecStart commands: path, argv (space-joined, as systemctl shows it), flags."""
    text = node.run(["systemctl", "show", "-p", "ExecStartEx", "--value", name]).stdout
    out = []
    for m in re.finditer(r"\{ path=(.*?) ; argv\[\]=(.*?) ; flags=(.*?) ;", text):
        out.append({"path": m.group(1), "argv": m.group(2), "flags": m.group(3)})
    return out


def run_unit(node: Any, name: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cp: subprocess.CompletedProcess[str] = node.run(["systemctl", "start", name], check=check)
    return cp


def read(node: Any, path: str) -> str:
    out: str = node.run(["cat", path]).stdout
    return out


@pytest.fixture
def kwt(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Prepare the node: kubensenter (a stand-in that execs "$@" when the real one is absent), a recording
    kubensenter, the output dir; remove every kwt unit, drop-in and stand-in afterwards."""
    try:
        node = request.getfixturevalue("node")
    except pytest.FixtureLookupError:
        pytest.skip("no 'node' fixture (tests/system/conftest.py provides the booted systemd node)")
    created_stub = node.run(["test", "-x", KS], check=False).returncode != 0
    if created_stub:
        put(node, KS, '#!/bin/sh\nexec "$@"\n', "0755")
    put(node, RECORDER, f'#!/bin/sh\necho "$*" >> {OUT}/recorder.log\nexec "$@"\n', "0755")
    node.run(["mkdir", "-p", OUT])
    try:
        yield node
    finally:
        sh(node, "systemctl stop 'kwt*' 2>/dev/null; systemctl reset-failed 'kwt*' 2>/dev/null; true", check=False)
        sh(
            node,
            f"rm -rf {VENDOR}/kwt* /etc/systemd/system/kwt* {OUT} /usr/local/lib/kwt"
            + (f" {KS}" if created_stub else ""),
            check=False,
        )
        node.run(["systemctl", "daemon-reload"], check=False)


def wrap(node: Any, *units: str, extra: tuple[str, ...] = ()) -> str:
    out = kubensctl(node, "wrap", *units, *extra).stdout
    reload(node)
    return out


# ------------------------------------------------------------------------------------------- shapes


def test_simple_unit_quoting_variables_specifiers(kwt: Any) -> None:
    unit(
        kwt,
        "kwt-simple.service",
        "Type=oneshot",
        "Environment=GREETING=hello SPLIT='one two'",
        f'ExecStart=/bin/sh -c \'printf "%%s|" "$@" > {OUT}/simple.out\' sh ${{GREETING}} $SPLIT "q  x" %n',
    )
    reload(kwt)
    out = wrap(kwt, "kwt-simple")
    assert "kwt-simple.service: wrapped 1 ExecStart line" in out
    (cmd,) = exec_start(kwt, "kwt-simple.service")
    assert cmd["path"] == KS
    assert cmd["argv"].startswith(f"{KS} /bin/sh -c ")
    run_unit(kwt, "kwt-simple.service")
    assert read(kwt, f"{OUT}/simple.out") == "hello|one|two|q  x|kwt-simple.service|"


def test_goes_through_kubensenter(kwt: Any) -> None:
    unit(kwt, "kwt-rec.service", "Type=oneshot", "ExecStart=/bin/echo recorded %n")
    reload(kwt)
    wrap(kwt, "kwt-rec", extra=("--kubensenter", RECORDER, "--dropin-name", "98-kwt-rec.conf"))
    run_unit(kwt, "kwt-rec.service")
    assert "/bin/echo recorded kwt-rec.service" in read(kwt, f"{OUT}/recorder.log")
    assert exec_start(kwt, "kwt-rec.service")[0]["path"] == RECORDER


def test_prefixes_keep_their_effect(kwt: Any) -> None:
    unit(kwt, "kwt-dash.service", "Type=oneshot", "ExecStart=-/bin/false")
    unit(
        kwt,
        "kwt-colon.service",
        "Type=oneshot",
        f"StandardOutput=file:{OUT}/colon.out",
        "ExecStart=:/bin/echo $HOME ${HOME}",
    )
    unit(
        kwt,
        "kwt-plus.service",
        "Type=oneshot",
        "User=nobody",
        f"StandardOutput=file:{OUT}/plus.out",
        "ExecStart=+/usr/bin/id -u",
    )
    unit(
        kwt,
        "kwt-bang.service",
        "Type=oneshot",
        "User=nobody",
        f"StandardOutput=file:{OUT}/bang.out",
        "ExecStart=!/usr/bin/id -u",
    )
    unit(
        kwt,
        "kwt-bangbang.service",
        "Type=oneshot",
        "User=nobody",
        # as nobody kubensenter could not join a pinned namespace: point its autodetection elsewhere
        f"Environment=DEFAULT_KUBENSMNT={OUT}/no-pin",
        f"StandardOutput=file:{OUT}/bangbang.out",
        "ExecStart=!!/usr/bin/id -u",
    )
    reload(kwt)
    wrap(kwt, "kwt-dash", "kwt-colon", "kwt-plus", "kwt-bang", "kwt-bangbang")
    flags = {n: exec_start(kwt, f"kwt-{n}.service")[0]["flags"] for n in ("dash", "colon", "plus", "bang", "bangbang")}
    assert "ignore-failure" in flags["dash"]
    assert "no-env-expand" in flags["colon"]
    assert "privileged" in flags["plus"]
    assert "no-setuid" in flags["bang"]
    assert "ambient" in flags["bangbang"]
    run_unit(kwt, "kwt-dash.service")  # /bin/false through kubensenter: failure ignored
    for n in ("colon", "plus", "bang", "bangbang"):
        run_unit(kwt, f"kwt-{n}.service")
    assert read(kwt, f"{OUT}/colon.out") == "$HOME ${HOME}\n"
    assert read(kwt, f"{OUT}/plus.out") == "0\n"
    assert read(kwt, f"{OUT}/bang.out") == "0\n"
    assert read(kwt, f"{OUT}/bangbang.out") != "0\n"  # ambient capabilities exist: User= applies


def test_at_prefix_keeps_argv0_and_main_pid(kwt: Any) -> None:
    unit(
        kwt,
        "kwt-at.service",
        "Type=oneshot",
        f"StandardOutput=file:{OUT}/at.out",
        "ExecStart=@/bin/cat my-cat /proc/self/cmdline",
    )
    unit(kwt, "kwt-atlong.service", "Type=simple", "ExecStart=@/bin/sleep my-sleep 600")
    reload(kwt)
    wrap(kwt, "kwt-at", "kwt-atlong")
    run_unit(kwt, "kwt-at.service")
    assert read(kwt, f"{OUT}/at.out").split("\0")[:2] == ["my-cat", "/proc/self/cmdline"]
    run_unit(kwt, "kwt-atlong.service")
    pid = kwt.run(["systemctl", "show", "-p", "MainPID", "--value", "kwt-atlong.service"]).stdout.strip()
    for _ in range(50):  # kubensenter and bash exec into sleep: the main PID ends as the program itself
        if read(kwt, f"/proc/{pid}/comm").strip() == "sleep":
            break
        kwt.run(["sleep", "0.1"])
    assert read(kwt, f"/proc/{pid}/comm").strip() == "sleep"
    assert read(kwt, f"/proc/{pid}/cmdline").split("\0")[:2] == ["my-sleep", "600"]
    kwt.run(["systemctl", "stop", "kwt-atlong.service"])


def test_continuations_and_resets_in_dropins(kwt: Any) -> None:
    unit(kwt, "kwtdash-a.service", "Type=oneshot", "ExecStart=/bin/false")
    put(
        kwt,
        f"{VENDOR}/kwtdash-a.service.d/10-reset.conf",
        '[Service]\nExecStart=\nExecStart=/bin/sh -c \'echo "$0 $1" >> '
        f"{OUT}/cont.out' \\\n# a comment inside\n    first \\\n    second\n",
    )
    put(
        kwt,
        f"{VENDOR}/kwtdash-.service.d/20-dash.conf",
        f"[Service]\nExecStart=/bin/sh -c 'echo dash >> {OUT}/cont.out'\n",
    )
    reload(kwt)
    wrap(kwt, "kwtdash-a")
    cmds = exec_start(kwt, "kwtdash-a.service")
    assert [c["path"] for c in cmds] == [KS, KS]
    run_unit(kwt, "kwtdash-a.service")
    assert read(kwt, f"{OUT}/cont.out") == "first second\ndash\n"


def test_multi_exec_start_oneshot_and_semicolons(kwt: Any) -> None:
    unit(
        kwt,
        "kwt-multi.service",
        "Type=oneshot",
        f"ExecStart=/bin/sh -c 'echo one >> {OUT}/multi.out'",
        f"ExecStart=/bin/sh -c 'echo two >> {OUT}/multi.out' ; /bin/sh -c 'echo three >> {OUT}/multi.out'",
    )
    reload(kwt)
    assert "wrapped 3 ExecStart lines" in wrap(kwt, "kwt-multi")
    assert [c["path"] for c in exec_start(kwt, "kwt-multi.service")] == [KS, KS, KS]
    run_unit(kwt, "kwt-multi.service")
    assert read(kwt, f"{OUT}/multi.out") == "one\ntwo\nthree\n"


def test_template_instance_specifiers(kwt: Any) -> None:
    unit(kwt, "kwt-tmpl@.service", "Type=oneshot", f"ExecStart=/usr/bin/printf '%%s|' \"a b\" %n %i --out={OUT}/%i")
    put(kwt, f"{VENDOR}/kwt-tmpl@.service.d/10-out.conf", f"[Service]\nStandardOutput=file:{OUT}/tmpl.out\n")
    reload(kwt)
    wrap(kwt, "kwt-tmpl@inst.service")
    run_unit(kwt, "kwt-tmpl@inst.service")
    assert read(kwt, f"{OUT}/tmpl.out") == f"a b|kwt-tmpl@inst.service|inst|--out={OUT}/inst|"
    assert exec_start(kwt, "kwt-tmpl@other.service")[0]["path"] == "/usr/bin/printf"  # other instances untouched


def test_idempotent_and_unwrap(kwt: Any) -> None:
    unit(kwt, "kwt-idem.service", "Type=oneshot", "ExecStart=/bin/true idem")
    reload(kwt)
    wrap(kwt, "kwt-idem")
    first = exec_start(kwt, "kwt-idem.service")
    again = kubensctl(kwt, "wrap", "kwt-idem").stdout
    assert "nothing changed" in again
    reload(kwt)
    assert exec_start(kwt, "kwt-idem.service") == first
    assert first[0]["argv"] == f"{KS} /bin/true idem"  # not wrapped twice
    assert "removed" in kubensctl(kwt, "unwrap", "kwt-idem").stdout
    reload(kwt)
    assert exec_start(kwt, "kwt-idem.service")[0]["argv"] == "/bin/true idem"
    assert "nothing changed" in kubensctl(kwt, "unwrap", "kwt-idem").stdout


def test_already_in_namespace_left_alone(kwt: Any) -> None:
    unit(kwt, "kwt-pre.service", "Type=oneshot", f"ExecStart={KS} /bin/true")
    unit(kwt, "kwt-nse.service", "Type=oneshot", "ExecStart=/usr/bin/nsenter --mount=/run/kubens/mnt /bin/true")
    reload(kwt)
    out = kubensctl(kwt, "wrap", "kwt-pre", "kwt-nse").stdout
    assert "nothing changed" in out
    assert kwt.run(["test", "-e", f"/etc/systemd/system/kwt-pre.service.d/{DROPIN}"], check=False).returncode != 0
    assert kwt.run(["test", "-e", f"/etc/systemd/system/kwt-nse.service.d/{DROPIN}"], check=False).returncode != 0


def test_errors_write_nothing(kwt: Any) -> None:
    unit(kwt, "kwt-ok.service", "Type=oneshot", "ExecStart=/bin/true")
    unit(kwt, "kwt-noexec.service", "Type=oneshot", "RemainAfterExit=yes", "ExecStop=/bin/true")
    reload(kwt)
    for args in (["kwt-ok", "kwt-missing"], ["kwt-ok", "kwt-noexec"], ["kwt-ok", "--kubensenter", "/nonexistent/ke"]):
        cp = kubensctl(kwt, "wrap", *args, check=False)
        assert cp.returncode == 1
        assert cp.stderr.count("\n") == 1 and cp.stderr.startswith("kubensctl: ")
        assert kwt.run(["test", "-e", "/etc/systemd/system/kwt-ok.service.d"], check=False).returncode != 0

"""The /proc/PID/mountinfo parser: escapes, every optional field, malformed lines."""

from __future__ import annotations

import pytest

from kubensctl import mountinfo
from kubensctl.status import leaked_mounts

SAMPLE = """\
22 1 253:0 / / rw,relatime shared:1 - xfs /dev/sda4 rw,attr2,inode64
36 22 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 22 0:45 / /var/lib/kubelet/pods/a\\040b/volumes/kubernetes.io~secret/tok\\011en rw shared:7 master:3 - tmpfs tmpfs rw,size=100k
41 22 0:46 / /run/kubens rw unbindable - tmpfs tmpfs rw
42 22 0:47 / /x rw propagate_from:5 master:4 - tmpfs none rw
43 22 0:4 mnt:[4026532457] /run/kubens/mnt rw - nsfs nsfs rw
44 22 0:48 / /back\\134slash\\012nl rw - tmpfs my\\040src rw
45 22 0:49 / /future rw shared:9 newfield:3 - overlay overlay rw,lowerdir=/a:/b,upperdir=/c
"""


def test_parse_sample() -> None:
    ms = mountinfo.parse(SAMPLE)
    assert [m.mount_id for m in ms] == [22, 36, 40, 41, 42, 43, 44, 45]
    root = ms[0]
    assert (root.major, root.minor, root.root, root.mount_point) == (253, 0, "/", "/")
    assert root.shared == 1 and root.master is None and root.propagation == "shared"
    assert root.fstype == "xfs" and root.source == "/dev/sda4" and root.super_options == "rw,attr2,inode64"


def test_master_only_is_slave() -> None:
    m = mountinfo.parse(SAMPLE)[1]
    assert m.root == "/mnt1" and m.mount_point == "/mnt2" and m.master == 1 and m.propagation == "slave"


def test_octal_escapes() -> None:
    ms = mountinfo.parse(SAMPLE)
    assert ms[2].mount_point == "/var/lib/kubelet/pods/a b/volumes/kubernetes.io~secret/tok\ten"
    assert ms[6].mount_point == "/back\\slash\nnl"
    assert ms[6].source == "my src"


def test_shared_and_slave() -> None:
    m = mountinfo.parse(SAMPLE)[2]
    assert (m.shared, m.master) == (7, 3) and m.propagation == "shared,slave"


def test_unbindable() -> None:
    m = mountinfo.parse(SAMPLE)[3]
    assert m.unbindable and m.propagation == "unbindable"


def test_propagate_from() -> None:
    m = mountinfo.parse(SAMPLE)[4]
    assert m.propagate_from == 5 and m.master == 4


def test_nsfs_root() -> None:
    m = mountinfo.parse(SAMPLE)[5]
    assert m.fstype == "nsfs" and m.root == "mnt:[4026532457]" and m.propagation == "private"


def test_unknown_optional_field_kept() -> None:
    m = mountinfo.parse(SAMPLE)[7]
    assert m.unknown_fields == ("newfield:3",) and m.shared == 9
    assert m.super_options == "rw,lowerdir=/a:/b,upperdir=/c"


def test_escape_roundtrip() -> None:
    for path in ["/a b", "/tab\there", "/nl\nx", "/back\\slash", "/plain"]:
        assert mountinfo.unescape(mountinfo.escape(path)) == path


@pytest.mark.parametrize(
    "line",
    [
        "22 1 253:0 / / rw shared:1 xfs /dev/sda rw",  # no separator
        "x 1 253:0 / / rw - xfs /dev/sda rw",  # bad id
        "22 1 253 / / rw - xfs /dev/sda rw",  # bad dev
        "22 1 253:0 / / rw shared:x - xfs /dev/sda rw",  # bad optional field
        "22 1 253:0 / / rw -",  # truncated
    ],
)
def test_malformed_lines(line: str) -> None:
    with pytest.raises(mountinfo.ParseError):
        mountinfo.parse_line(line)


def test_identity_ignores_mount_ids() -> None:
    a = mountinfo.parse_line("10 1 0:45 / /x rw - tmpfs t rw")
    b = mountinfo.parse_line("99 7 0:45 / /x rw master:3 - tmpfs t rw")
    assert a.identity() == b.identity()


def test_find_returns_topmost() -> None:
    ms = mountinfo.parse("10 1 0:45 / /x rw - tmpfs a rw\n11 10 0:46 / /x rw - tmpfs b rw\n")
    found = mountinfo.find(ms, "/x")
    assert found is not None and found.source == "b"


def test_read_self() -> None:
    ms = mountinfo.read()
    assert any(m.mount_point == "/" for m in ms)


def test_leak_detection_rules() -> None:
    table = mountinfo.parse(
        "50 22 0:50 / /var/lib/containers/storage/overlay/abc/merged rw - overlay overlay rw\n"
        "51 22 8:16 / /var/lib/containers rw - xfs /dev/sdb rw\n"  # dedicated disk, not a leak
        "52 22 8:1 /var/lib/containers/storage/overlay /var/lib/containers/storage/overlay rw - xfs /dev/sda rw\n"
        "53 22 0:51 / /run/containerd/io.containerd.runtime.v2.task/k8s.io/x/rootfs rw - overlay overlay rw\n"
        "54 22 0:52 / /home/user rw - tmpfs tmpfs rw\n"
    )
    assert [m.mount_id for m in leaked_mounts(table)] == [50, 52, 53]

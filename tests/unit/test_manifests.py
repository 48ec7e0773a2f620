"""`kubensctl machineconfig` and `kubensctl daemonset`: exact seed output, schemas, embedding, the agent."""

from __future__ import annotations

import base64
import copy
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import jsonschema
import pytest
import yaml

from clitest import one_line, run
from kubensctl import manifests
from kubensctl.cli import main

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
SEED = SHARED / "seed" / "mount-namespace-encapsulation.zh.txt"
SCHEMAS = SHARED / "schemas"
FAKES = ROOT / "tests" / "fakes"
SRC = ROOT / "src"

# There are JSON Schemas for Ignition 3.2 and 3.4 only; 3.1 is checked against 3.2 (3.2 only added
# fields) and 3.3 against 3.4 (likewise), which is the nearest schema that accepts every 3.1/3.3 field we use.
SCHEMA_FOR = {"3.1.0": "3.2", "3.2.0": "3.2", "3.3.0": "3.4", "3.4.0": "3.4"}
UNIT_SUFFIXES = (
    ".service", ".socket", ".device", ".mount", ".automount", ".swap", ".target", ".path", ".timer",
    ".snapshot", ".slice", ".scope",
)  # fmt: skip


def seed_machineconfigs() -> str:
    """The YAML of the specification's step 1 (7.4.2), de-indented, as a user would save it."""
    lines = SEED.read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == "apiVersion: machineconfiguration.openshift.io/v1")
    end = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("2."))
    block = [ln[4:] if ln.startswith("    ") else ln.strip() for ln in lines[start:end]]
    while block and not block[-1].strip():
        block.pop()
    return "\n".join(block) + "\n"


# ------------------------------------------------------------------------------------------------
# Validation helpers: Ignition JSON Schema, the MachineConfig CRD, Ignition's extra rules
# ------------------------------------------------------------------------------------------------


def _strict(schema: Any, root: Any = None) -> Any:
    """The schema with additionalProperties: false on every object that lists its properties.

    Ignition's own parser rejects unknown keys; its JSON Schema does not say so. This catches typos.
    An ``allOf`` of object schemas (Ignition's file = node + contents) is merged first, so the union of
    their properties is what is allowed."""
    root = schema if root is None else root
    if isinstance(schema, list):
        return [_strict(v, root) for v in schema]
    if not isinstance(schema, dict):
        return schema
    if "allOf" in schema:
        merged: Dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for part in schema["allOf"]:
            while "$ref" in part:
                node = root
                for key in part["$ref"].lstrip("#/").split("/"):
                    node = node[key]
                part = node
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        if not merged["required"]:
            del merged["required"]
        schema = {**{k: v for k, v in schema.items() if k != "allOf"}, **merged}
    out = {k: _strict(v, root) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def ignition_validator(version: str) -> jsonschema.Draft4Validator:
    schema = json.loads((SCHEMAS / f"ignition-v{SCHEMA_FOR[version]}.json").read_text())
    return jsonschema.Draft4Validator(_strict(schema))


def crd_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((SCHEMAS / "machineconfig.crd.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_openapi_to_jsonschema(version["schema"]["openAPIV3Schema"]))


def _openapi_to_jsonschema(s: Any) -> Any:
    """OpenAPI v3 structural schema -> JSON Schema: `nullable` allows null, x-kubernetes-* dropped."""
    if isinstance(s, list):
        return [_openapi_to_jsonschema(v) for v in s]
    if not isinstance(s, dict):
        return s
    out = {k: _openapi_to_jsonschema(v) for k, v in s.items() if not k.startswith("x-kubernetes-")}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if s.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
    elif out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False  # structural schemas prune unknown fields: treat them as errors
    return out


DATA_URL = re.compile(r"^data:([-\w.+/]+(;[-\w.+]+=[-\w.+\"]+)*)?(;base64)?,[A-Za-z0-9!$&'()*+,;=:@/?%._~-]*$")


def ignition_extra_rules(config: Dict[str, Any]) -> List[str]:
    """The rules of ../shared/schemas/README.md that the JSON Schema does not express."""
    problems = []
    for unit in config.get("systemd", {}).get("units", []):
        if not unit["name"].endswith(UNIT_SUFFIXES):
            problems.append(f"unit name {unit['name']!r} lacks a unit suffix")
        for dropin in unit.get("dropins", []):
            if not dropin["name"].endswith(".conf"):
                problems.append(f"drop-in {dropin['name']!r} does not end in .conf")
    for f in config.get("storage", {}).get("files", []):
        if not f["path"].startswith("/"):
            problems.append(f"file path {f['path']!r} is not absolute")
        source = f.get("contents", {}).get("source")
        if source is not None and not DATA_URL.match(source):
            problems.append(f"{f['path']}: contents.source is not a data URL")
    return problems


def validate_machineconfig(mc: Dict[str, Any], version: str) -> None:
    errors = [e.message for e in crd_validator().iter_errors(mc)]
    assert not errors, errors
    config = mc["spec"]["config"]
    errors = [f"{list(e.path)}: {e.message}" for e in ignition_validator(version).iter_errors(config)]
    assert not errors, errors
    assert config["ignition"]["version"] == version
    assert not ignition_extra_rules(config)


def load_all(text: str) -> List[Any]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


FAKE_BUILD = b"#!/usr/bin/python3 -I\nPK\x03\x04 stands for the single-file build \x00\xff\xfe"


@pytest.fixture
def install_module() -> types.ModuleType:
    from kubensctl import install

    return install


# ------------------------------------------------------------------------------------------------
# machineconfig: the seed, versions, roles, formats
# ------------------------------------------------------------------------------------------------


def test_default_is_exactly_the_seed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "machineconfig")
    assert code == 0 and err == ""
    assert out == seed_machineconfigs()


def test_default_parses_as_the_seed(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "machineconfig")
    assert load_all(out) == load_all(seed_machineconfigs())
    assert [list(d) for d in load_all(out)] == [["apiVersion", "kind", "metadata", "spec"]] * 2


@pytest.mark.parametrize("version", manifests.IGNITION_VERSIONS)
def test_every_version_validates(capsys: pytest.CaptureFixture[str], version: str) -> None:
    code, out, _ = run(capsys, "machineconfig", "--ignition-version", version)
    assert code == 0
    docs = load_all(out)
    assert [d["metadata"]["name"] for d in docs] == ["99-kubens-master", "99-kubens-worker"]
    for d in docs:
        validate_machineconfig(d, version)


@pytest.mark.parametrize("bad", ["3.0.0", "3.5.0", "2.2.0", "3.2", "latest", ""])
def test_bad_ignition_version(capsys: pytest.CaptureFixture[str], bad: str) -> None:
    code, out, err = run(capsys, "machineconfig", "--ignition-version", bad)
    assert code == 2 and out == ""
    line = one_line(err)
    assert f"unsupported Ignition version {bad!r}" in line
    assert "accepted: 3.1.0, 3.2.0, 3.3.0, 3.4.0" in line


def test_roles_replace_the_pools(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "machineconfig", "--role", "infra", "--role", "worker", "--role", "infra")
    assert code == 0
    docs = load_all(out)
    assert [d["metadata"]["name"] for d in docs] == ["99-kubens-infra", "99-kubens-worker"]
    assert docs[0]["metadata"]["labels"] == {"machineconfiguration.openshift.io/role": "infra"}


@pytest.mark.parametrize("bad", ["Infra", "in fra", "-x", "a/b", "x" * 64, "x-"])
def test_bad_role(capsys: pytest.CaptureFixture[str], bad: str) -> None:
    code, _, err = run(capsys, "machineconfig", f"--role={bad}")
    assert code == 2
    assert "invalid pool role" in one_line(err)


def test_json_format_is_a_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "machineconfig", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["kind"] == "List" and data["apiVersion"] == "v1"
    assert data["items"] == load_all(seed_machineconfigs())


def test_output_file_is_written_atomically(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "mount_namespace_config.yaml"
    target.write_text("old")
    code, out, _ = run(capsys, "machineconfig", "-o", str(target))
    assert code == 0 and out == ""
    assert target.read_text() == seed_machineconfigs()
    assert os.listdir(tmp_path) == ["mount_namespace_config.yaml"]


def test_output_to_missing_directory_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "machineconfig", "-o", str(tmp_path / "nope" / "mc.yaml"))
    assert code == 1
    one_line(err)


# ------------------------------------------------------------------------------------------------
# Butane
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "butane"), [("3.2.0", "4.8.0"), ("3.4.0", "4.14.0")])
def test_butane(capsys: pytest.CaptureFixture[str], version: str, butane: str) -> None:
    code, out, _ = run(capsys, "machineconfig", "--format", "butane", "--ignition-version", version)
    assert code == 0
    docs = load_all(out)
    assert docs[0] == {
        "variant": "openshift",
        "version": butane,
        "metadata": {"name": "99-kubens-master", "labels": {"machineconfiguration.openshift.io/role": "master"}},
        "systemd": {"units": [{"name": "kubens.service", "enabled": True}]},
    }
    assert docs[1]["metadata"]["name"] == "99-kubens-worker"


@pytest.mark.parametrize("version", ["3.1.0", "3.3.0"])
def test_butane_has_no_variant_for(capsys: pytest.CaptureFixture[str], version: str) -> None:
    code, _, err = run(capsys, "machineconfig", "--format", "butane", "--ignition-version", version)
    assert code == 2
    line = one_line(err)
    assert f"no spec version for Ignition {version}" in line and "3.2.0 or 3.4.0" in line


def butane_to_ignition(doc: Dict[str, Any]) -> Dict[str, Any]:
    """What butane does for the fields we use: inline -> data URL, version -> Ignition version."""
    version = {v: k for k, v in manifests.BUTANE_OPENSHIFT_VERSIONS.items()}[doc["version"]]
    config: Dict[str, Any] = {"ignition": {"version": version}}
    if "storage" in doc:
        files = []
        for f in doc["storage"]["files"]:
            c = f["contents"]
            data = c["inline"].encode() if "inline" in c else manifests.decode_data_url(c["source"])
            files.append({"path": f["path"], "mode": f["mode"], "overwrite": f["overwrite"], "data": data})
        config["storage"] = {"files": files}
    config["systemd"] = doc["systemd"]
    return config


def _normalized(config: Dict[str, Any]) -> Dict[str, Any]:
    c = copy.deepcopy(config)
    for f in c.get("storage", {}).get("files", []):
        if "contents" in f:
            f["data"] = manifests.decode_data_url(f.pop("contents")["source"])
    c["systemd"]["units"] = [dict(sorted(u.items())) for u in c["systemd"]["units"]]
    return c


# ------------------------------------------------------------------------------------------------
# --embed
# ------------------------------------------------------------------------------------------------


def embedded(capsys: pytest.CaptureFixture[str], *extra: str) -> List[Dict[str, Any]]:
    code, out, err = run(capsys, "machineconfig", "--embed", *extra)
    assert code == 0, err
    assert "/usr/bin/python3" in one_line(err)  # the node-side requirement is said, once
    docs = load_all(out)
    assert docs, out
    return docs


def test_embed_carries_exactly_the_node_files(
    install_module: types.ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = embedded(capsys)
    expected = install_module.node_files(
        wrap_units=(), env_units=manifests.OPENSHIFT_UNITS, kubensenter_path=manifests.EMBED_KUBENSENTER
    )
    for mc in docs:
        validate_machineconfig(mc, "3.2.0")
        laid = laid_by_config(mc["spec"]["config"])
        for f in expected:
            assert laid[f.path] == (f.mode, f.data), f.path
        assert laid[manifests.EMBED_KUBENSCTL] == (0o755, install_module.build_zipapp())
        assert set(laid) == {f.path for f in expected} | {install_module.RECORD}
        units = {u["name"]: u for u in mc["spec"]["config"]["systemd"]["units"]}
        assert units["kubens.service"]["enabled"] is True
        assert "enabled" not in units["kubelet.service"]  # the drop-in does not change enablement
        assert [d["name"] for d in units["crio.service"]["dropins"]] == ["01-kubens.conf"]


def test_embed_is_byte_identical_to_install_root(
    install_module: types.ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kubensctl install --root DIR --env kubelet --env crio` on an RHCOS-like tree lays exactly the embed."""
    root = tmp_path / "node"
    stubs = {"usr/lib/systemd/system/crio.service", "etc/systemd/system/kubelet.service"}  # as on RHCOS
    for stub in stubs:
        (root / stub).parent.mkdir(parents=True, exist_ok=True)
        (root / stub).write_text("[Service]\nExecStart=/usr/bin/true\n")
    code, _, err = run(capsys, "install", "--root", str(root), "--env", "kubelet", "--env", "crio")
    assert code == 0, err
    on_disk: Dict[str, Tuple[int, bytes]] = {}
    links = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            links.append((f"/{rel}", os.readlink(path)))
        elif path.is_file() and rel not in stubs:
            on_disk[f"/{rel}"] = (path.stat().st_mode & 0o7777, path.read_bytes())
    (mc, _) = embedded(capsys)
    assert laid_by_config(mc["spec"]["config"]) == on_disk
    # install enables kubens.service with a symlink; the MachineConfig says enabled: true.
    assert links == [
        ("/etc/systemd/system/multi-user.target.wants/kubens.service", "/etc/systemd/system/kubens.service")
    ]
    assert mc["spec"]["config"]["systemd"]["units"][0] == {
        "contents": on_disk["/etc/systemd/system/kubens.service"][1].decode(),
        "enabled": True,
        "name": "kubens.service",
    }


def laid_by_config(config: Dict[str, Any]) -> Dict[str, Tuple[int, bytes]]:
    """path -> (mode, bytes) as Ignition lays them: units and drop-ins under /etc/systemd/system, 0644."""
    laid = {}
    for f in config.get("storage", {}).get("files", []):
        assert f["overwrite"] is True
        laid[f["path"]] = (f["mode"], manifests.decode_data_url(f["contents"]["source"]))
    for u in config["systemd"]["units"]:
        if "contents" in u:
            laid[f"/etc/systemd/system/{u['name']}"] = (0o644, u["contents"].encode())
        for d in u.get("dropins", []):
            laid[f"/etc/systemd/system/{u['name']}.d/{d['name']}"] = (0o644, d["contents"].encode())
    return laid


@pytest.mark.parametrize("version", manifests.IGNITION_VERSIONS)
def test_embed_validates_for_every_version(
    install_module: types.ModuleType, capsys: pytest.CaptureFixture[str], version: str
) -> None:
    for mc in embedded(capsys, "--ignition-version", version, "--role", "infra"):
        validate_machineconfig(mc, version)


def test_embed_executables_are_0755(install_module: types.ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    (mc, _) = embedded(capsys)
    modes = {f["path"]: f["mode"] for f in mc["spec"]["config"]["storage"]["files"]}
    assert modes[manifests.EMBED_KUBENSENTER] == 0o755 == 493
    assert modes[manifests.EMBED_KUBENSCTL] == 0o755


def test_embed_json_equals_yaml(install_module: types.ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    docs = embedded(capsys)
    code, out, _ = run(capsys, "machineconfig", "--embed", "--format", "json")
    assert code == 0
    assert json.loads(out)["items"] == docs


@pytest.mark.parametrize("version", ["3.2.0", "3.4.0"])
def test_embed_butane_is_equivalent(
    install_module: types.ModuleType, capsys: pytest.CaptureFixture[str], version: str
) -> None:
    mcs = embedded(capsys, "--ignition-version", version)
    code, out, _ = run(capsys, "machineconfig", "--embed", "--format", "butane", "--ignition-version", version)
    assert code == 0
    butanes = load_all(out)
    for mc, bu in zip(mcs, butanes):
        assert bu["metadata"] == {"name": mc["metadata"]["name"], "labels": mc["metadata"]["labels"]}
        assert butane_to_ignition(bu) == _normalized(mc["spec"]["config"])
        inline = [f for f in bu["storage"]["files"] if "inline" in f["contents"]]
        assert any(f["path"] == manifests.EMBED_KUBENSENTER for f in inline)  # text stays readable


def test_embed_without_installer_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kubensctl.install", None)  # type: ignore[arg-type]  # import fails
    with pytest.raises(manifests.KubensError) as e:
        manifests.embedded_files()
    assert "no node installer" in e.value.line()


def test_data_urls_round_trip() -> None:
    for data in (b"", b"plain text\n", "é\n".encode(), b"\x00\xff\xfe binary", bytes(range(256))):
        url = manifests.data_url(data)
        assert DATA_URL.match(url)
        assert manifests.decode_data_url(url) == data
    assert manifests.decode_data_url("data:,hello%20world%0A") == b"hello world\n"


def test_units_that_are_not_plain_go_to_storage_files(install_module: types.ModuleType) -> None:
    """A unit outside /etc/systemd/system, or not 0644, cannot be a systemd.units entry."""
    NodeFile = install_module.NodeFile
    files = [
        NodeFile("/usr/local/lib/systemd/system/kubens.service", 0o644, b"[Unit]\n", "unit", "kubens.service"),
        NodeFile(
            "/etc/systemd/system/crio.service.d/x.conf", 0o600, b"[Service]\n", "dropin", "crio.service", "x.conf"
        ),
    ]
    files.append(NodeFile("/etc/systemd/system/odd.service", 0o644, b"\xff\xfe", "unit", "odd.service"))
    config = manifests.ignition_config("3.2.0", files)
    assert [f["path"] for f in config["storage"]["files"]] == sorted(f.path for f in files)
    assert config["systemd"]["units"] == [{"enabled": True, "name": "kubens.service"}]


# ------------------------------------------------------------------------------------------------
# The YAML emitter, checked by PyYAML
# ------------------------------------------------------------------------------------------------

TRICKY = [
    "", " ", "a", "yes", "No", "on", "OFF", "y", "n", "~", "null", "Null", "true", "False", "=", "<<",
    "0755", "0o755", "0x1F", "1_000", "1:20", "12e3", "1.5", ".5", "-.inf", ".NaN", "3.2.0", "2024-05-02",
    "- a", "-", "? x", ": x", "a: b", "a #b", "#c", "a:", "'q'", '"d"', "%x", "@x", "`x`", "&a", "*a", "!t",
    "|", ">", "{a}", "[a]", "a,b", "trailing ", " leading", "tab\there", "line\nbreak", "end\n", "two\n\n",
    "\nlead", "  indented\nlines\n", "back\\slash", "uni é ü 中文", "emoji \U0001F600", "ctl \x01\x7f",
    "cr\r\nlf", "bom \ufeff", "ls \u2028", "nel \x85", "machineconfiguration.openshift.io/role",
    "kubens.service", "data:text/plain;charset=utf-8;base64,AAEC", "---", "...", "--- x", "a\n---\nb\n",
    "a\n...\n", "...x", "---x", "# not a comment\n", "  \n  \n", "x\n \n", "ExecStart=\nExecStart=/bin/x $ARGS\n",
]  # fmt: skip


@pytest.mark.parametrize("value", TRICKY)
def test_yaml_scalars_round_trip(value: str) -> None:
    doc = {"k": value, value or "empty": [value, {"n": value, "m": [value]}], "seq": [[value]]}
    assert yaml.safe_load(manifests.to_yaml(doc)) == doc


def test_yaml_random_strings_round_trip() -> None:
    """Many random strings over an alphabet of YAML's troublemakers, as keys, values and list items."""
    import random

    rng = random.Random(4)
    alphabet = list("aZ09 .-_:#,[]{}&*!|>'\"%@`?=~\\/\t\n\r") + ["é", "中", "\x00", "\x7f", "\ufeff", "\u2028", "\x85"]
    words = ["yes", "null", "0o7", "1e3", "---", "...", "- ", ": ", " #", "0x", "true", "~"]
    for _ in range(1500):
        parts = [rng.choice(alphabet) if rng.random() < 0.8 else rng.choice(words) for _ in range(rng.randint(0, 12))]
        value = "".join(parts)
        doc = {value: value, "l": [value, {value: [value]}]}
        text = manifests.to_yaml(doc)
        assert yaml.safe_load(text) == doc, (value, text)


def test_yaml_shapes_round_trip() -> None:
    doc = {
        "i": 0, "neg": -5, "big": 10**20, "t": True, "f": False, "none": None, "empty_map": {}, "empty_list": [],
        "nested": [{"a": [{"b": {"c": [1, 2, {}]}}, []]}, [[1], [2, [3]]]],
    }  # fmt: skip
    text = manifests.to_yaml(doc)
    assert yaml.safe_load(text) == doc
    assert list(yaml.safe_load_all(manifests.to_yaml_stream([doc, {"x": 1}]))) == [doc, {"x": 1}]


def test_yaml_rejects_unknown_types() -> None:
    with pytest.raises(TypeError):
        manifests.to_yaml({"f": 1.5})


def test_yaml_round_trips_real_unit_files(install_module: types.ModuleType) -> None:
    for f in install_module.node_files(env_units=("kubelet.service",)):
        if f.kind == "file":
            continue
        text = f.data.decode()
        assert yaml.safe_load(manifests.to_yaml({"contents": text})) == {"contents": text}


# ------------------------------------------------------------------------------------------------
# daemonset
# ------------------------------------------------------------------------------------------------


def k8s_validate(doc: Dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(doc, "1.30", strict=True)


def daemonset_docs(capsys: pytest.CaptureFixture[str], *extra: str) -> List[Dict[str, Any]]:
    code, out, err = run(capsys, "daemonset", *extra)
    assert code == 0, err
    return load_all(out)


def test_daemonset_objects_validate(install_module: types.ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    docs = daemonset_docs(capsys)
    assert [d["kind"] for d in docs] == [
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet",
    ]  # fmt: skip
    for d in docs:
        k8s_validate(d)


def test_kubernetes_validation_has_teeth(install_module: types.ModuleType) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    ds = manifests.daemonset_manifests("kubensctl", "img", b"x")[-1]
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["hostPid"] = True  # wrong case: unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.30", strict=True)


def test_daemonset_carries_the_build(install_module: types.ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    docs = daemonset_docs(capsys, "--namespace", "ops-kubens", "--image", "registry.example.com/py:3.11")
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert base64.b64decode(cm["binaryData"]["kubensctl.pyz"]) == install_module.build_zipapp()
    ds = docs[-1]
    pod = ds["spec"]["template"]["spec"]
    assert ds["metadata"]["namespace"] == "ops-kubens" == cm["metadata"]["namespace"]
    assert pod["hostPID"] is True
    (c,) = pod["containers"]
    assert c["securityContext"]["privileged"] is True
    assert c["image"] == "registry.example.com/py:3.11"
    assert c["command"][-1] == "install"
    assert c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert pod["tolerations"] == [{"operator": "Exists"}]  # control-plane nodes too
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubensctl", "namespace": "ops-kubens"}]
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]}]


def test_daemonset_uninstall(install_module: types.ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    install = daemonset_docs(capsys)[-1]
    uninstall = daemonset_docs(capsys, "--uninstall")[-1]
    k8s_validate(uninstall)
    assert uninstall["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "uninstall"
    ann = "kubensctl.io/mode"
    assert install["spec"]["template"]["metadata"]["annotations"][ann] == "install"
    assert uninstall["spec"]["template"]["metadata"]["annotations"][ann] == "uninstall"  # forces a rollout


@pytest.mark.parametrize(("flag", "value"), [("--namespace", "Kube_NS"), ("--namespace", "-x"), ("--image", "a b")])
def test_daemonset_bad_input(
    install_module: types.ModuleType, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    code, out, err = run(capsys, "daemonset", flag, value)
    assert code == 2 and out == ""
    one_line(err)


def test_daemonset_to_file(
    install_module: types.ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "kubensctl.yaml"
    code, out, _ = run(capsys, "daemonset", "-o", str(target))
    assert code == 0 and out == ""
    assert [d["kind"] for d in load_all(target.read_text())][-1] == "DaemonSet"


# ------------------------------------------------------------------------------------------------
# The DaemonSet's agent, against a fake nsenter (tests/fakes/nsenter) and a local fake API server
# ------------------------------------------------------------------------------------------------


class _API(http.server.BaseHTTPRequestHandler):
    patches: List[Tuple[str, Dict[str, Any], str, str]] = []

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).patches.append(
            (self.path, body, self.headers.get("Authorization", ""), self.headers.get("Content-Type", ""))
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[str]:
    _API.patches = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _API)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def agent_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_server: str) -> Dict[str, Path]:
    host = tmp_path / "host"
    host.mkdir()
    build = tmp_path / "kubensctl.pyz"
    build.write_bytes(FAKE_BUILD)
    token = tmp_path / "token"
    token.write_text("s3cr3t\n")
    env = {
        "PATH": f"{FAKES}{os.pathsep}{os.environ['PATH']}",
        "FAKE_HOST_ROOT": str(host),
        "FAKE_NSENTER_LOG": str(tmp_path / "nsenter.log"),
        "KUBENSCTL_API_SERVER": api_server,
        "KUBENSCTL_TOKEN_FILE": str(token),
        "KUBENSCTL_BUILD": str(build),
        "KUBENSCTL_DONE_FILE": str(tmp_path / "done"),
        "KUBENSCTL_AGENT_ONCE": "1",
        "NODE_NAME": "worker-0",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return {"host": host, "done": tmp_path / "done", "log": tmp_path / "nsenter.log"}


def nsenter_calls(log: Path) -> List[List[str]]:
    return [json.loads(ln) for ln in log.read_text().splitlines()]


def test_agent_install_marks_reboot(agent_env: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STATUS_RC", "3")  # installed, not yet encapsulated: needs the next boot
    assert manifests.agent_main(["install"]) == 0
    host = agent_env["host"]
    laid = host / "usr/local/bin/kubensctl"
    assert laid.read_bytes() == FAKE_BUILD and laid.stat().st_mode & 0o777 == 0o755
    assert (host / "var/run/reboot-required").exists()  # kured's sentinel
    assert _API.patches == [
        (
            "/api/v1/nodes/worker-0",
            {"metadata": {"labels": {"kubensctl.io/reboot-required": "true"}}},
            "Bearer s3cr3t",
            "application/merge-patch+json",
        )
    ]
    calls = nsenter_calls(agent_env["log"])
    prefix = ["--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--", "env", "-i"]
    assert all(c[:10] == prefix and c[10].startswith("PATH=") for c in calls)
    assert ["python3", "/usr/local/bin/kubensctl", "install"] in [c[11:] for c in calls]
    assert agent_env["done"].read_text() == "reboot-required\n"


def test_agent_after_reboot_clears_the_mark(agent_env: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STATUS_RC", "0")
    assert manifests.agent_main(["install"]) == 0
    assert not (agent_env["host"] / "var/run/reboot-required").exists()
    assert _API.patches[0][1] == {"metadata": {"labels": {"kubensctl.io/reboot-required": None}}}


def test_agent_uninstall(agent_env: Dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STATUS_RC", "0")  # still encapsulated until the next boot
    assert manifests.agent_main(["uninstall"]) == 0
    assert ["python3", manifests.HOST_AGENT_COPY, "uninstall"] in [c[11:] for c in nsenter_calls(agent_env["log"])]
    assert _API.patches[0][1]["metadata"]["labels"]["kubensctl.io/reboot-required"] == "true"


def test_agent_install_failure(
    agent_env: Dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_INSTALL_RC", "1")
    assert manifests.agent_main(["install"]) == 1
    assert "kubensctl install failed on worker-0 (exit 1)" in capsys.readouterr().err
    assert not agent_env["done"].exists() and _API.patches == []


def test_agent_bad_usage(agent_env: Dict[str, Path]) -> None:
    assert manifests.agent_main(["frobnicate"]) == 2


def test_container_command_imports_the_agent_from_the_build(agent_env: Dict[str, Path], tmp_path: Path) -> None:
    """The DaemonSet's `python3 -c BOOTSTRAP BUILD MODE` works from a single-file build (zipimport)."""
    from kubensctl import install

    pyz = tmp_path / "kubensctl.pyz"
    pyz.write_bytes(install.build_zipapp())
    ds = manifests.daemonset_manifests("kubensctl", "img", b"x")[-1]
    command = ds["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[0] == "python3"
    env = dict(os.environ, FAKE_STATUS_RC="3")
    proc = subprocess.run(
        [sys.executable, command[1], command[2], str(pyz), "install"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "worker-0: reboot required" in proc.stderr


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "machineconfig" in out and "daemonset" in out and "cluster" in out

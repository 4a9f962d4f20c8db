#!/usr/bin/python3
"""qubesd double: a small stand-in for Qubes' qubesd in the dom0 container and in tests.

It is NOT qubesd. It reproduces only what reliant-formula depends on
(qubes-core-admin `qubes/app.py`, `qubes/utils.py`, `qubes/tools/qubesd.py`; docs/design/shard-format.md):

- the store is the file named by `QUBES_XML_PATH` (default /var/lib/qubes/qubes.xml), read
  at start under `fcntl.lockf`; a missing store, a syntax error, or any store that the real
  loader refuses stop the start (exit 1, message). What the real loader refuses is decided
  by the library's model of it, `reliant.qubesd_load` (its docstring names the
  qubes-core-admin versions it was read from), for the release in `QUBESD_DOUBLE_RELEASE`
  (default 4.3); tests/fixtures/qubesd-load holds the real loader's verdicts it is checked
  against;
- every save takes `fcntl.lockf` on the store, refuses when the file's mtime is not the one
  seen at the last load or save ("Someone else modified qubes.xml in the meantime"), writes
  a temporary file in the same directory (name = store + "~" + random), fchmod 0660, fsync,
  rename over the store, fsync the directory; the output is qubesd's (lxml pretty print,
  an empty property as `<property name="x"></property>`), so an unchanged store is
  rewritten byte for byte;
- every change requested is saved at once (as the Admin API does), and SIGTERM saves and
  exits (exit 1 if that save is refused);
- a new qube gets the lowest unused qid in 1..9999 and a random uuid; its volumes follow
  qubesd's layout (root of an AppVM: a snapshot of its template's root in the template's
  pool; private and volatile in the requested pool; kernel in linux-kernel) and its dom0
  directory `appvms/NAME` (templates: `vm-templates/NAME`) is made under the base dir
  (`QUBESD_DOUBLE_BASE_DIR`, default /var/lib/qubes) and removed with it; firewall rules
  are written to `firewall.xml` there (qubes/firewall.py: version 2, 0664, replace_file)
  without touching the store;
- a file/file-reflink pool can be added (`qvm-pool add`): its directory is created;
- systemd `Type=notify` readiness (READY=1 on `NOTIFY_SOCKET`).

Left out: the Admin API protocol and qrexec (requests are JSON lines on a unix socket,
`QUBESD_DOUBLE_SOCKET`, default /var/run/qubesd.sock), libvirt/Xen (no qube ever runs),
storage (no volume is created), extensions and events (no tags are added except the
guivm/audiovm ones every real qube carries), validation of a new qube or pool beyond
its references, label and pool (a property, feature or tag set is refused when the store
would then not load), DispVM and other classes at
creation, renaming, firewall rules other than one action.

Usage: `qubesd_double.py serve` (the service), `qubesd_double.py ctl COMMAND ...` (client).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import grp
import json
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any, Optional

import lxml.etree

#: Where the library's model of the loader is: in the repository, and where the dom0
#: container image puts it next to /usr/bin/qubesd-double.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _path in (os.path.join(_HERE, os.pardir, os.pardir, os.pardir, "_utils", "reliant_lib"),
              "/usr/lib/qubesd-double"):
    if os.path.isdir(os.path.join(_path, "reliant")) and os.path.normpath(_path) not in sys.path:
        sys.path.append(os.path.normpath(_path))
from reliant import qubesd_load  # noqa: E402 - found through the paths above

DEFAULT_STORE = "/var/lib/qubes/qubes.xml"
DEFAULT_SOCKET = "/var/run/qubesd.sock"
DEFAULT_BASE_DIR = "/var/lib/qubes"
DEFAULT_RELEASE = "4.3"
MAX_QID = 10000
GLOBAL_VM_PROPERTIES = ("default_template", "default_netvm", "default_dispvm",
                        "management_dispvm", "updatevm", "clockvm", "default_guivm",
                        "default_audiovm")
DOMAIN_VM_PROPERTIES = ("template", "netvm", "default_dispvm", "management_dispvm", "guivm",
                        "audiovm", "relayvm")
WRITE_ONCE_PROPERTIES = ("name", "qid", "uuid")
CREATABLE_CLASSES = ("AppVM", "TemplateVM", "StandaloneVM")
SIZES = {"root": "10737418240", "private": "2147483648", "volatile": "10737418240"}


class Refused(Exception):
    """A request or a load that qubesd would refuse; the message says why."""


def _parser() -> lxml.etree.XMLParser:
    return lxml.etree.XMLParser(remove_blank_text=True, resolve_entities=False,
                                no_network=True, load_dtd=False)


class Store:
    """The store file, the tree loaded from it and the mtime seen at the last load/save."""

    def __init__(self, path: str, base_dir: str = DEFAULT_BASE_DIR,
                 release: str = DEFAULT_RELEASE) -> None:
        self.path = path
        self.base_dir = base_dir
        self.release = release
        self.tree: Any = None
        self.mtime_ns: Optional[int] = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        """The store file under lockf, re-opened if it was replaced while we waited."""
        while True:
            try:
                handle = open(self.path, "r+b")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                raise Refused(f"Qubes XML store {self.path!r} is missing") from None
            with handle:
                fcntl.lockf(handle, fcntl.LOCK_EX)
                try:
                    same = os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if same:
                    yield handle
                    return

    # --- load -------------------------------------------------------------------------
    def load(self) -> None:
        """Read the store under lockf and refuse it where qubesd's `Qubes.load` would."""
        with self._locked() as handle:
            try:
                tree = lxml.etree.parse(handle, _parser())
            except lxml.etree.XMLSyntaxError as error:
                raise Refused(f"{self.path}: {error}") from None
            if tree.docinfo.doctype:
                raise Refused(f"{self.path}: a DOCTYPE is not allowed")
            for element in tree.iter("property", "feature"):
                if element.text is None:  # qubesd writes "" as <property ...></property>
                    element.text = ""
            _check(tree.getroot(), self.release)
            self.tree = tree
            self.mtime_ns = os.stat(self.path).st_mtime_ns

    # --- save -------------------------------------------------------------------------
    def save(self) -> None:
        """Write the store atomically under lockf; refuse if someone else changed it."""
        with self._locked():
            if os.stat(self.path).st_mtime_ns != self.mtime_ns:
                raise Refused(f"Someone else modified qubes.xml in the meantime ({self.path})")
            directory, prefix = os.path.split(self.path + "~")
            with tempfile.NamedTemporaryFile(dir=directory, prefix=prefix, delete=False) as tmp:
                try:
                    self.tree.write(tmp, encoding="utf-8", pretty_print=True)
                    tmp.flush()
                    os.fchmod(tmp.fileno(), 0o660)
                    with contextlib.suppress(KeyError):
                        os.fchown(tmp.fileno(), -1, grp.getgrnam("qubes").gr_gid)
                    os.fsync(tmp.fileno())
                    os.rename(tmp.name, self.path)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp.name)
                    raise
            _fsync_dir(directory or ".")
            self.mtime_ns = os.stat(self.path).st_mtime_ns

    # --- queries ----------------------------------------------------------------------
    @property
    def root(self) -> Any:
        return self.tree.getroot()

    def domain(self, name: str) -> Any:
        for element in self.root.iterfind("domains/domain"):
            if _domain_name(element) == name:
                return element
        raise Refused(f"no such domain: {name!r}")

    def list_domains(self) -> list[dict[str, Any]]:
        """Name, qid, class, tags and pools of every domain."""
        return [{"name": _domain_name(d), "qid": _domain_qid(d), "class": d.get("class"),
                 "tags": [t.get("name") for t in d.iterfind("tags/tag")],
                 "pools": sorted({v.get("pool") for v in d.iterfind("volume-config/volume")})}
                for d in self.root.iterfind("domains/domain")]

    # --- changes (each one is saved by the caller) ------------------------------------
    def add_domain(self, name: str, klass: str, label: str, pool: Optional[str] = None,
                   template: Optional[str] = None) -> int:
        """Create a domain like `qvm-create`: lowest unused qid, random uuid."""
        if klass not in CREATABLE_CLASSES:
            raise Refused(f"the double creates only {', '.join(CREATABLE_CLASSES)}, not {klass!r}")
        if any(_domain_name(d) == name for d in self.root.iterfind("domains/domain")):
            raise Refused(f"domain {name!r} already exists")
        if label not in _labels(self.root):
            raise Refused(f"no such label: {label!r}")
        pools = _pools(self.root)
        pool = pool or _global_property(self.root, "default_pool")
        if pool not in pools:
            raise Refused(f"no such storage pool: {pool!r}")
        template_root = None
        if klass == "AppVM":
            template = template or _global_property(self.root, "default_template")
            if not template:
                raise Refused("Template for the qube not specified, nor default template set.")
            source = self.domain(template)
            if source.get("class") != "TemplateVM":
                raise Refused(f"{template!r} is not a TemplateVM")
            template_root = source.find("volume-config/volume[@name='root']")
        elif template:
            raise Refused(f"a {klass} has no template")
        used = {_domain_qid(d) for d in self.root.iterfind("domains/domain")}
        qid = next((q for q in range(1, MAX_QID) if q not in used), None)
        if qid is None:
            raise Refused("Cannot find unused qid!")
        domain = lxml.etree.SubElement(self.root.find("domains"), "domain",
                                       id=f"domain-{qid}", **{"class": klass})
        properties = lxml.etree.SubElement(domain, "properties")
        values = {"label": label, "name": name, "qid": str(qid), "uuid": str(uuid.uuid4())}
        if template:
            values["template"] = template
        for key, value in values.items():
            lxml.etree.SubElement(properties, "property", name=key).text = value
        lxml.etree.SubElement(domain, "features")
        tags = lxml.etree.SubElement(domain, "tags")
        for tag in ("audiovm-dom0", "guivm-dom0"):
            lxml.etree.SubElement(tags, "tag", name=tag)
        _volume_config(domain, name, klass, pools, pool, template_root)
        os.makedirs(self.domain_dir(name, klass), mode=0o775, exist_ok=True)
        return qid

    def set_firewall(self, name: str, action: str) -> None:
        """Write the qube's firewall.xml with one rule, like `qvm-firewall NAME add ACTION`
        followed by the rules being saved (only the dom0 directory changes)."""
        domain = self.domain(name)
        if action not in ("accept", "drop"):
            raise Refused(f"firewall action must be accept or drop, not {action!r}")
        root = lxml.etree.Element("firewall", version="2")
        rule = lxml.etree.SubElement(lxml.etree.SubElement(root, "rules"), "rule")
        properties = lxml.etree.SubElement(rule, "properties")
        lxml.etree.SubElement(properties, "property", name="action").text = action
        path = os.path.join(self.domain_dir(name, domain.get("class")), "firewall.xml")
        directory, prefix = os.path.split(path + "~")
        with tempfile.NamedTemporaryFile(dir=directory, prefix=prefix, delete=False) as tmp:
            lxml.etree.ElementTree(root).write(tmp, encoding="UTF-8", pretty_print=True)
            tmp.flush()
            os.fchmod(tmp.fileno(), 0o664)
            os.fsync(tmp.fileno())
        os.rename(tmp.name, path)
        _fsync_dir(directory)

    def domain_dir(self, name: str, klass: str) -> str:
        """The qube's dom0 directory, whatever its pool (qubes-core-admin `dir_path`)."""
        kind = "vm-templates" if klass == "TemplateVM" else "appvms"
        return os.path.join(self.base_dir, kind, name)

    def add_pool(self, name: str, driver: str, dir_path: str) -> None:
        """Add a file(-reflink) pool like `qvm-pool add` (its directory is created)."""
        if driver not in ("file", "file-reflink"):
            raise Refused(f"the double adds only file and file-reflink pools, not {driver!r}")
        if name in _pools(self.root):
            raise Refused(f"pool named {name} already exists")
        os.makedirs(dir_path, exist_ok=True)
        lxml.etree.SubElement(self.root.find("pools"), "pool", name=name, dir_path=dir_path,
                              driver=driver, revisions_to_keep="1",
                              ephemeral_volatile="False")

    def remove_domain(self, name: str) -> None:
        """Remove a domain that nothing references, and its dom0 directory."""
        domain = self.domain(name)
        if domain.get("class") == "AdminVM":
            raise Refused("dom0 cannot be removed")
        users = [holder for holder, target in _references(self.root)
                 if target == name and holder != name]
        if users:
            raise Refused(f"domain {name!r} is in use by {', '.join(sorted(set(users)))}")
        domain.getparent().remove(domain)
        directory = self.domain_dir(name, domain.get("class"))
        shutil.rmtree(directory, ignore_errors=True)

    def set_property(self, name: Optional[str], key: str, value: Optional[str]) -> None:
        """Set a property of domain `name` (None: a global one); value None resets it."""
        holder = self.root if name is None else self.domain(name)
        if name is not None and key in WRITE_ONCE_PROPERTIES:
            raise Refused(f"property {key!r} of {name!r} cannot be changed")
        names = GLOBAL_VM_PROPERTIES if name is None else DOMAIN_VM_PROPERTIES
        if value and key in names:
            self.domain(value)
        if key == "label" and value not in _labels(self.root):
            raise Refused(f"no such label: {value!r}")
        _set_child(holder.find("properties"), "property", key, value)

    def set_feature(self, name: str, key: str, value: Optional[str]) -> None:
        _set_child(self.domain(name).find("features"), "feature", key, value)

    def set_tag(self, name: str, tag: str, present: bool) -> None:
        tags = self.domain(name).find("tags")
        found = tags.find(f"tag[@name={_xpath_literal(tag)}]")
        if present and found is None:
            lxml.etree.SubElement(tags, "tag", name=tag)
        elif not present and found is not None:
            tags.remove(found)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _xpath_literal(text: str) -> str:
    if '"' not in text:
        return f'"{text}"'
    if "'" not in text:
        return f"'{text}'"
    raise Refused(f"name with both quote kinds: {text!r}")


def _set_child(parent: Any, tag: str, key: str, value: Optional[str]) -> None:
    found = parent.find(f"{tag}[@name={_xpath_literal(key)}]")
    if value is None:
        if found is not None:
            parent.remove(found)
        return
    if found is None:
        found = lxml.etree.SubElement(parent, tag, name=key)
    found.text = value


def _domain_property(domain: Any, key: str) -> Optional[str]:
    found = domain.find(f"properties/property[@name={_xpath_literal(key)}]")
    return None if found is None else found.text


def _domain_name(domain: Any) -> Optional[str]:
    return "dom0" if domain.get("class") == "AdminVM" else _domain_property(domain, "name")


def _domain_qid(domain: Any) -> int:
    if domain.get("class") == "AdminVM":
        return 0
    try:
        return int(_domain_property(domain, "qid") or "")
    except ValueError:
        raise Refused(f"domain {_domain_name(domain)!r} has no valid qid") from None


def _global_property(root: Any, key: str) -> Optional[str]:
    found = root.find(f"properties/property[@name={_xpath_literal(key)}]")
    return None if found is None else found.text


def _labels(root: Any) -> set[str]:
    return {label.text for label in root.iterfind("labels/label")}


def _pools(root: Any) -> dict[str, Any]:
    return {pool.get("name"): pool for pool in root.iterfind("pools/pool")}


def _references(root: Any) -> list[tuple[str, str]]:
    """(holder, referenced domain name) for every non-empty domain reference in the store."""
    found = [("global " + key, _global_property(root, key)) for key in GLOBAL_VM_PROPERTIES]
    for domain in root.iterfind("domains/domain"):
        name = _domain_name(domain) or "?"
        found += [(name, _domain_property(domain, key)) for key in DOMAIN_VM_PROPERTIES]
        found += [(name, device.get("backend-domain"))
                  for device in domain.iterfind("devices/device")]
    return [(holder, value) for holder, value in found if value]


def _check(root: Any, release: str) -> None:
    """Refuse the store when the model says qubesd does not load it (the first reason,
    as qubesd stops at the first exception)."""
    if root.tag != "qubes":
        raise Refused(f"root element is <{root.tag}>, not <qubes>")
    refusals = [problem for problem in qubesd_load.problems(root, release) if problem.fatal]
    if refusals:
        more = f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
        raise Refused(f"qubesd does not load this store: {refusals[0]}{more}")


def _volume_config(domain: Any, name: str, klass: str, pools: dict[str, Any], pool: str,
                   template_root: Any) -> None:
    config = lxml.etree.SubElement(domain, "volume-config")
    kind = "vm-templates" if klass == "TemplateVM" else "appvms"
    for volume in ("root", "private", "volatile"):
        snapshot = volume == "root" and template_root is not None
        in_pool = template_root.get("pool") if snapshot else pool
        attributes = {
            "name": volume, "pool": in_pool, "vid": _vid(pools[in_pool], kind, name, volume),
            "revisions_to_keep": pools[in_pool].get("revisions_to_keep", "1"), "rw": "True",
            "save_on_stop": str(volume == "private" or (volume == "root" and not snapshot)),
            "snap_on_start": str(snapshot), "size": SIZES[volume]}
        if snapshot:
            attributes["source"] = template_root.get("vid")
        lxml.etree.SubElement(config, "volume", **attributes)
    if "linux-kernel" in pools:
        lxml.etree.SubElement(config, "volume", name="kernel", pool="linux-kernel", vid="",
                              revisions_to_keep="0", rw="False", save_on_stop="False",
                              snap_on_start="False")


def _vid(pool: Any, kind: str, name: str, volume: str) -> str:
    if pool.get("driver") == "lvm_thin":
        return f"{pool.get('volume_group')}/vm-{name}-{volume}"
    return f"{kind}/{name}/{volume}"


# --- the service ----------------------------------------------------------------------------
def handle(store: Store, request: dict[str, Any]) -> Any:
    """Apply one request; every change is saved at once, as qubesd's Admin API does."""
    op = request.get("op")
    if op == "list":
        return store.list_domains()
    if op == "save":
        store.save()
        return None
    if op == "firewall":  # qubesd keeps firewall rules out of qubes.xml
        return store.set_firewall(request["name"], request.get("action", "accept"))
    if op == "add":
        result: Any = store.add_domain(request["name"], request.get("class", "AppVM"),
                                       request.get("label", "red"), request.get("pool"),
                                       request.get("template"))
    elif op == "pool":
        result = store.add_pool(request["name"], request.get("driver", "file-reflink"),
                                request["dir_path"])
    elif op == "remove":
        result = store.remove_domain(request["name"])
    elif op in ("property", "feature", "tag"):
        result = _checked_change(store, op, request)
    else:
        raise Refused(f"unknown request {op!r}")
    store.save()
    return result


def _checked_change(store: Store, op: str, request: dict[str, Any]) -> None:
    """Set a property, feature or tag, refused (and undone) when the store would then not
    load: qubesd's setters and the Admin API refuse such values when they are set."""
    before = copy.deepcopy(store.tree)
    if op == "property":
        store.set_property(request.get("name"), request["key"], request.get("value"))
    elif op == "feature":
        store.set_feature(request["name"], request["key"], request.get("value"))
    else:
        store.set_tag(request["name"], request["tag"], request.get("present", True))
    try:
        _check(store.root, store.release)
    except Refused as error:
        store.tree = before
        raise Refused(str(error).replace("qubesd does not load this store",
                                         "qubesd refuses this change")) from None


def _answer(store: Store, connection: socket.socket) -> None:
    connection.settimeout(10)
    with connection, connection.makefile("rwb") as stream:
        try:
            request = json.loads(stream.readline(65536))
            reply = {"ok": True, "result": handle(store, request)}
        except (Refused, KeyError, TypeError, ValueError, OSError) as error:
            reply = {"ok": False, "error": str(error) or type(error).__name__}
        stream.write(json.dumps(reply).encode() + b"\n")


def _notify_ready() -> None:
    address = os.environ.pop("NOTIFY_SOCKET", None)
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.connect(address)
        notify.sendall(b"READY=1\nSTATUS=qubesd double online\n")


def serve(store_path: str, socket_path: str, base_dir: str,
          release: str = DEFAULT_RELEASE) -> int:
    """Load the store, answer requests until SIGTERM/SIGINT, then save and exit."""
    store = Store(store_path, base_dir, release)
    try:
        store.load()
    except Refused as error:
        print(f"qubesd-double: refusing to start: {error}", file=sys.stderr)
        return 1
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(8)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    _notify_ready()
    print(f"qubesd-double: serving {store_path} on {socket_path}", flush=True)
    stopping = False
    while not stopping:
        for key, _ in selector.select():
            if key.fileobj == wake_read:
                stopping = True
            else:
                _answer(store, listener.accept()[0])
    listener.close()
    os.unlink(socket_path)
    try:
        store.save()
    except (Refused, OSError) as error:
        print(f"qubesd-double: save at exit failed: {error}", file=sys.stderr)
        return 1
    print(f"qubesd-double: saved {store_path}, exiting", flush=True)
    return 0


# --- the client -------------------------------------------------------------------------
def request(socket_path: str, message: dict[str, Any]) -> dict[str, Any]:
    """Send one request to a running double and return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(socket_path)
        with client.makefile("rwb") as stream:
            stream.write(json.dumps(message).encode() + b"\n")
            stream.flush()
            return json.loads(stream.readline())


def _ctl_message(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "add":
        return {"op": "add", "name": args.name, "class": args.klass, "label": args.label,
                "pool": args.pool, "template": args.template}
    if args.command == "remove":
        return {"op": "remove", "name": args.name}
    if args.command == "firewall":
        return {"op": "firewall", "name": args.name, "action": args.action}
    if args.command == "pool":
        return {"op": "pool", "name": args.name, "driver": args.driver,
                "dir_path": args.dir_path}
    if args.command in ("prop", "feature"):
        op = "property" if args.command == "prop" else "feature"
        return {"op": op, "name": args.name, "key": args.key,
                "value": None if args.default else (args.value or "")}
    if args.command == "global-prop":
        return {"op": "property", "name": None, "key": args.key,
                "value": None if args.default else (args.value or "")}
    if args.command == "tag":
        return {"op": "tag", "name": args.name, "tag": args.tag, "present": not args.remove}
    return {"op": args.command}


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qubesd-double", description=__doc__.split("\n")[0])
    parser.add_argument("--socket", default=os.environ.get("QUBESD_DOUBLE_SOCKET", DEFAULT_SOCKET))
    commands = parser.add_subparsers(dest="mode", required=True)
    commands.add_parser("serve", help="run the double (the qubesd.service ExecStart)")
    ctl = commands.add_parser("ctl", help="send a request to the running double")
    sub = ctl.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a qube (qvm-create)")
    add.add_argument("name")
    add.add_argument("--class", dest="klass", default="AppVM", choices=CREATABLE_CLASSES)
    add.add_argument("--label", default="red")
    add.add_argument("--pool", help="pool of its private/volatile (and own root) volumes")
    add.add_argument("--template")
    sub.add_parser("remove", help="remove a qube (qvm-remove)").add_argument("name")
    firewall = sub.add_parser("firewall", help="write the qube's firewall.xml (qvm-firewall)")
    firewall.add_argument("name")
    firewall.add_argument("action", nargs="?", default="accept", choices=("accept", "drop"))
    pool = sub.add_parser("pool", help="add a storage pool (qvm-pool add)")
    pool.add_argument("name")
    pool.add_argument("--driver", default="file-reflink", choices=("file", "file-reflink"))
    pool.add_argument("--dir-path", required=True)
    for command, what in (("prop", "property"), ("feature", "feature")):
        item = sub.add_parser(command, help=f"set a {what} (value omitted: empty)")
        item.add_argument("name")
        item.add_argument("key")
        item.add_argument("value", nargs="?")
        item.add_argument("--default", action="store_true", help=f"delete the {what}")
    item = sub.add_parser("global-prop", help="set a global property")
    item.add_argument("key")
    item.add_argument("value", nargs="?")
    item.add_argument("--default", action="store_true", help="reset it to its default")
    tag = sub.add_parser("tag", help="add (or --remove) a tag")
    tag.add_argument("name")
    tag.add_argument("tag")
    tag.add_argument("--remove", action="store_true")
    sub.add_parser("list", help="print the domains as JSON")
    sub.add_parser("save", help="save the store now")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = _arguments().parse_args(argv)
    if args.mode == "serve":
        return serve(os.environ.get("QUBES_XML_PATH", DEFAULT_STORE), args.socket,
                     os.environ.get("QUBESD_DOUBLE_BASE_DIR", DEFAULT_BASE_DIR),
                     os.environ.get("QUBESD_DOUBLE_RELEASE", DEFAULT_RELEASE))
    try:
        reply = request(args.socket, _ctl_message(args))
    except OSError as error:
        print(f"qubesd-double: cannot reach {args.socket}: {error}", file=sys.stderr)
        return 1
    if not reply["ok"]:
        print(f"qubesd-double: refused: {reply['error']}", file=sys.stderr)
        return 1
    if reply["result"] is not None:
        print(json.dumps(reply["result"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

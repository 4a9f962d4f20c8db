"""The runtime commands over the settings of reliant-shard: what the CLI and the
``reliant_shard`` execution module both run.

Settings come from the JSON file named by ``$RELIANT_CONFIG`` (default
/etc/reliant/reliant.json, written by the ``reliant.shards`` state; optional; keys:
those of `DEFAULTS`), then from the caller's overrides. `Host` is how a command sees
qubesd and the running qubes; tests pass their own.

Offline commands (suture, rename, review, adopt, release, dissect with `final`) refuse
while qubesd is active: they would race the store qubesd holds. Off the volatile root
(`root_check`, the interlock of `reliant.volatile.interlock`) `attach` refuses and suture
merges core alone, unless `require_volatile` is false; then status, attach and suture
warn. The same holds while isolation is enabled (a `policy_dir` is set) on a qrexec
without a runtime policy directory (`reliant.platform`, R4.2). Where qubesd has no
prohibit-start, `missing_reference: recover` acts as skip, and suture, check and status
say so. Every refusal is one of `REFUSALS`, with a message that says why (an OSError's
names its path).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Optional

from reliant import adopt as moves
from reliant import audit, menus, operations, platform, store
from reliant.isolation import policy
from reliant.shards import startup
from reliant.shards.dom0dirs import MAX_BYTES as DOM0_DIR_MAX_BYTES
from reliant.shards.dom0dirs import QUBES_DIR
from reliant.shards.files import Shard, discover, init_shard
from reliant.shards.real_loader import RealLoader
from reliant.shards.records import qube_name
from reliant.shards.runtime import default_detached_path, read_detached, write_detached
from reliant.shards.suture import missing_reference_mode
from reliant.shards.traces import Traces
from reliant.vocab import Problem, ShardError, shard_tag
from reliant.volatile import interlock, running
from reliant.volatile.settings import Settings as VolatileSettings
from reliant.volatile.settings import VolatileError

CONFIG_PATH = "/etc/reliant/reliant.json"
#: The settings and their defaults: those of pillar reliant:shards, reliant:isolation and
#: reliant:volatile (parameters/defaults.yaml; tests/unit/test_defaults.py holds them
#: equal), for a dom0 whose configuration file is missing; where shard qubes' autostart
#: links and libvirt definitions are (`reliant.shards.traces`).
DEFAULTS: dict[str, Any] = {
    "core": "/var/lib/qubes/qubes.xml",
    "merged": "/run/reliant/qubes.xml",
    "roots": ["/run/shufflecake"],
    "max_depth": 3,
    "missing_reference": "recover",
    "real_loader_check": True,
    "policy_dir": policy.RUNTIME_DIR,
    "services": None,
    "libdir": "/usr/lib/reliant",
    "qubes_dir": QUBES_DIR,
    "dom0_dir_max_bytes": DOM0_DIR_MAX_BYTES,
    "require_volatile": True,
    "volatile_title": VolatileSettings.volatile_title,
    "upper_warn_percent": VolatileSettings.upper_warn_percent,
    "systemd_dir": Traces.systemd_dir,
    "libvirt_dir": Traces.libvirt_dir,
}


class UsageError(Exception):
    """Bad settings (the CLI exits 2)."""


#: What a command refuses with.
REFUSALS = (ShardError, store.StoreError, UsageError, OSError)


class Host:
    """qubesd and the running qubes, as seen through systemctl and xl/qvm-ls; the Qubes
    platform, from `release_file` and `rpm` (`reliant.platform`)."""

    release_file = platform.RELEASE_FILE
    rpm = "rpm"

    def __init__(self, release_file: str = platform.RELEASE_FILE, rpm: str = "rpm") -> None:
        self.release_file, self.rpm = release_file, rpm

    def qubesd_active(self) -> bool:
        try:
            return subprocess.run(["systemctl", "is-active", "--quiet", "qubesd"],
                                  check=False).returncode == 0
        except OSError as exc:
            raise ShardError(f"cannot tell whether qubesd runs: systemctl: "
                             f"{exc.strerror}") from None

    def wait_active(self, seconds: int = 60) -> bool:
        """Whether qubesd becomes active within `seconds` (its unit restarts it after a
        failed start: on core only, if the fallback took over)."""
        for _ in range(seconds):
            if self.qubesd_active():
                return True
            time.sleep(1)
        return self.qubesd_active()

    def running_qubes(self) -> set[str]:
        """Names of running qubes; ShardError if no tool can tell."""
        if shutil.which("xl"):
            out = self._output(["xl", "list"])
            return {line.split()[0] for line in out.splitlines()[1:] if line.split()} - {
                "Domain-0"}
        if shutil.which("qvm-ls"):
            out = self._output(["qvm-ls", "--running", "--raw-list"])
            return {line.strip() for line in out.splitlines() if line.strip()} - {"dom0"}
        raise ShardError("cannot tell which qubes run (neither xl nor qvm-ls found); "
                         "refusing to detach")

    def volatile_status(self, settings: VolatileSettings) -> dict[str, Any]:
        """How dom0's root runs (`reliant.volatile.running.status`)."""
        return running.status(settings)

    def qubesd(self, action: str) -> None:
        try:
            result = subprocess.run(["systemctl", action, "qubesd"], check=False,
                                    capture_output=True, text=True)
        except OSError as exc:
            raise ShardError(f"systemctl {action} qubesd: {exc.strerror}") from None
        if result.returncode:
            raise ShardError(f"systemctl {action} qubesd failed: "
                             f"{result.stderr.strip() or result.returncode}")

    def qubes_platform(self) -> platform.Platform:
        """The Qubes release and package versions of this dom0 (`reliant.platform`)."""
        return platform.read(self.release_file, self.rpm)

    def desktop(self) -> Optional[menus.Desktop]:
        """Whose application menus attach makes and detach removes."""
        return menus.Desktop.find()

    @staticmethod
    def _output(argv: list[str]) -> str:
        try:
            result = subprocess.run(argv, check=False, capture_output=True, text=True)
        except OSError as exc:
            raise ShardError(f"{argv[0]}: {exc.strerror}") from None
        if result.returncode:
            raise ShardError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
        return result.stdout


def load_config(path: str) -> dict[str, Any]:
    """DEFAULTS overridden by the JSON object at `path` (if it exists)."""
    config = dict(DEFAULTS)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return config
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the configuration: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    for key, value in data.items():
        if key not in DEFAULTS:
            raise UsageError(f"{path}: unknown key {key!r} (known: {', '.join(DEFAULTS)})")
        config[key] = value
    return config


def settings(config_path: Optional[str] = None,
             overrides: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The configuration file (`config_path`, else $RELIANT_CONFIG, else CONFIG_PATH),
    then the `overrides` that are set; roots given as "DIR,DIR" become a list.
    UsageError when a setting has the wrong shape."""
    found = load_config(config_path or os.environ.get("RELIANT_CONFIG", CONFIG_PATH))
    for key, value in (overrides or {}).items():
        if value is not None:
            found[key] = value
    if isinstance(found["roots"], str):
        found["roots"] = [root for root in found["roots"].split(",") if root]
    if not isinstance(found["roots"], list) or not all(
            isinstance(root, str) for root in found["roots"]):
        raise UsageError("roots must be a list of directories")
    if not isinstance(found["max_depth"], int) or found["max_depth"] < 0:
        raise UsageError("max_depth must be a non-negative integer")
    limit = found["dom0_dir_max_bytes"]
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise UsageError("dom0_dir_max_bytes must be a non-negative integer")
    for flag in ("require_volatile", "real_loader_check"):
        if not isinstance(found[flag], bool):
            raise UsageError(f"{flag} must be true or false")
    return found


def root_check(found: Mapping[str, Any], host: Host) -> interlock.RootCheck:
    """May shards be merged on the root dom0 runs on, and what to warn about."""
    try:
        volatile = interlock.volatile_settings(found)
    except VolatileError as exc:
        raise UsageError(str(exc)) from None
    return interlock.check_root(host.volatile_status(volatile), found["require_volatile"],
                                volatile)


def _traces(found: Mapping[str, Any]) -> Traces:
    """Where the shard qubes' autostart links and libvirt definitions are."""
    return Traces(found["systemd_dir"], found["libvirt_dir"])


def _warnings(check: interlock.RootCheck) -> list[Problem]:
    return [Problem("warning", "volatile", text) for text in check.warnings]


def isolation_refusal(found: Mapping[str, Any], facts: platform.Platform) -> Optional[str]:
    """Why no shard may be merged while isolation is enabled (a runtime `policy_dir` is
    set) on the dom0 `facts` describes; None when shards may be merged."""
    return policy.runtime_policy_refusal(facts) if found["policy_dir"] else None


def refuse_if_qubesd_runs(host: Host, what: str) -> None:
    if host.qubesd_active():
        raise ShardError(f"qubesd is running: {what} needs it stopped (systemctl stop "
                         "qubesd), else qubesd would overwrite or be confused by the change")


def _detached(found: Mapping[str, Any]) -> set[str]:
    """Ids of the shards suture leaves out (the list beside the merged store)."""
    return read_detached(default_detached_path(found["merged"]))


def _visible(found: Mapping[str, Any]) -> list[Shard]:
    """The shards under the roots (unreadable ones left out)."""
    return discover(found["roots"], found["max_depth"], problems=[])


def init(found: Mapping[str, Any], directory: str, qid_range: Optional[tuple[int, int]],
         depends_on: Sequence[str] = (), shard_id: Optional[str] = None) -> Shard:
    return init_shard(directory, qid_range, depends_on, shard_id, found["roots"],
                      found["max_depth"])


def _real_loader(found: Mapping[str, Any]) -> Optional[RealLoader]:
    """qubes-core-admin's own loader, unless real_loader_check is false."""
    return RealLoader() if found["real_loader_check"] else None


def suture(found: Mapping[str, Any], host: Host) -> operations.Result:
    """Write the merged store from core and the visible shards not detached (core alone
    off the volatile root, unless require_volatile is false); the root's warnings first.
    After qubesd stopped before it started on the last merged store, every shard is
    detached first (`reliant.shards.startup`)."""
    refuse_if_qubesd_runs(host, "suture")
    check = root_check(found, host)
    facts = host.qubes_platform()
    isolation = isolation_refusal(found, facts)
    holds = [Problem("error", kind, text) for kind, text in
             (("volatile", check.refusal), ("isolation", isolation)) if text]
    mode, warnings = missing_reference_mode(found["missing_reference"], facts)
    reason = startup.failed_merge(found["merged"])
    if reason:
        path = default_detached_path(found["merged"])
        write_detached(path, read_detached(path) | {s.id for s in _visible(found)})
        startup.fall_back(found["merged"], reason)
    result = operations.suture(
        found["core"], found["roots"], found["merged"], max_depth=found["max_depth"],
        missing_reference=mode, policy_dir=None if isolation else found["policy_dir"] or None,
        services=found["services"], qubes_dir=found["qubes_dir"], detached=_detached(found),
        dom0_dir_max_bytes=found["dom0_dir_max_bytes"], hold_shards=holds,
        traces=_traces(found), real_loader=_real_loader(found))
    startup.begin(found["merged"], [shard.id for shard in result.shards])
    result.problems[:0] = _warnings(check) + warnings + (
        [Problem("error", "fallback", reason)] if reason else [])
    return result


def started(found: Mapping[str, Any]) -> None:
    """The qubesd unit's ExecStartPost: qubesd is ready on the merged store."""
    startup.started(found["merged"])


def dissect(found: Mapping[str, Any], host: Host, final: bool = False) -> operations.Result:
    """Write core and each merged shard back (`final`: qubesd has stopped)."""
    if final:
        refuse_if_qubesd_runs(host, "a final dissect")
        startup.stopped(found["merged"], os.environ)
    return operations.dissect(found["merged"], found["core"], found["roots"],
                              max_depth=found["max_depth"], qubes_dir=found["qubes_dir"],
                              final=final, traces=_traces(found))


def check(found: Mapping[str, Any], host: Optional[Host] = None) -> operations.Result:
    """What suture would report, writing nothing (with the mode suture would run in)."""
    mode, warnings = missing_reference_mode(found["missing_reference"],
                                            (host or Host()).qubes_platform())
    result = operations.check(found["core"], found["roots"], max_depth=found["max_depth"],
                              missing_reference=mode, detached=_detached(found),
                              dom0_dir_max_bytes=found["dom0_dir_max_bytes"],
                              real_loader=_real_loader(found),
                              scratch=os.path.dirname(os.path.abspath(found["merged"])))
    result.problems[:0] = warnings
    return result


def status(found: Mapping[str, Any], host: Optional[Host] = None) -> dict[str, Any]:
    """What is visible and merged, and what needs attention, with dom0's `mode` and the
    root's warnings (kind ``volatile``), the `platform` (`reliant.platform`) and what it
    changes (kinds ``isolation``, ``recovery``)."""
    host = host or Host()
    report = operations.status(found["core"], found["merged"], found["roots"],
                               max_depth=found["max_depth"])
    check = root_check(found, host)
    facts = host.qubes_platform()
    isolation = isolation_refusal(found, facts)
    found_problems = check.problems() + missing_reference_mode(
        found["missing_reference"], facts)[1]
    if isolation:
        found_problems.append(Problem("warning", "isolation",
                                      f"shards are not merged: {isolation}"))
    report["mode"] = check.mode
    report["platform"] = facts.report()
    report["problems"] += [asdict(p) for p in found_problems]
    return report


def rename(found: Mapping[str, Any], host: Host, qube: str, new: str,
           shard: Optional[str] = None) -> operations.Result:
    refuse_if_qubesd_runs(host, "rename")
    return operations.rename_qube(found["roots"], qube, new, core=found["core"],
                                  shard_id=shard, max_depth=found["max_depth"])


def review(found: Mapping[str, Any], host: Host, qube: str,
           shard: Optional[str] = None) -> operations.Result:
    refuse_if_qubesd_runs(host, "review")
    return operations.review_qube(found["roots"], qube, shard_id=shard,
                                  max_depth=found["max_depth"])


def adopt(found: Mapping[str, Any], host: Host, qubes: Sequence[str],
          shard: str) -> operations.Result:
    """Move core qubes into `shard` (`reliant.adopt`)."""
    refuse_if_qubesd_runs(host, "adopt")
    return moves.adopt(found["core"], found["roots"], qubes, shard, merged=found["merged"],
                       qubes_dir=found["qubes_dir"], max_depth=found["max_depth"],
                       traces=_traces(found))


def release(found: Mapping[str, Any], host: Host, qubes: Sequence[str],
            shard: Optional[str] = None) -> operations.Result:
    """Move shard qubes back into core (`reliant.adopt`)."""
    refuse_if_qubesd_runs(host, "release")
    return moves.release(found["core"], found["roots"], qubes, shard, merged=found["merged"],
                         qubes_dir=found["qubes_dir"], max_depth=found["max_depth"],
                         traces=_traces(found))


def _shard_ids(selected: Iterable[str], shards: Sequence[Shard]) -> set[str]:
    """Ids of the shards named in `selected` (by id or directory); ShardError for one
    that is not visible."""
    ids = set()
    for item in selected:
        match = [s.id for s in shards if item in (s.id, s.path)
                 or os.path.realpath(item) == os.path.realpath(s.path)]
        if not match:
            raise ShardError(f"no visible shard {item!r}")
        ids.update(match)
    return ids


def detach(found: Mapping[str, Any], host: Host, selected: Sequence[str] = ()
           ) -> tuple[set[str], list[str]]:
    """Leave the `selected` shards (all visible ones by default) out of the merge, remove
    their qubes' menus and restart qubesd without them; refused while a qube of theirs
    runs. Returns their ids and the warnings about menus."""
    shards = _visible(found)
    ids = _shard_ids(selected, shards) if selected else {s.id for s in shards}
    if not ids:
        raise ShardError("no visible shard to detach")
    running = host.running_qubes()
    busy = []
    if os.path.exists(found["merged"]):
        merged = store.load(found["merged"])
        tags = {shard_tag(i) for i in ids}
        for domain in merged.iterfind("domains/domain"):
            name = qube_name(domain)
            if name in running and any(t.get("name") in tags
                                       for t in domain.iterfind("tags/tag")):
                busy.append(name)
    for shard in shards:
        if shard.id in ids:
            busy += [qube_name(d) for d in shard.domains if qube_name(d) in running]
    if busy:
        raise ShardError(f"qubes of the shards to detach are running: "
                         f"{', '.join(sorted(set(busy)))}; shut them down first")
    path = default_detached_path(found["merged"])
    write_detached(path, read_detached(path) | ids)
    warnings = []
    if os.path.exists(found["merged"]):
        warnings = menus.remove_menus(host.desktop(), menus.merged_qubes(merged, ids))
    _restart_qubesd(host)
    return ids, warnings


def attach(found: Mapping[str, Any], host: Host, selected: Sequence[str] = ()) -> list[str]:
    """Merge the `selected` detached shards again (all by default): restart qubesd, then
    make the menus of the shard qubes it merged (and of the `selected` shards' again).
    Refused off the volatile root unless require_volatile is false, and while isolation
    is enabled on a qrexec without a runtime policy directory. Returns the root's
    warnings and those about menus (a failure there does not fail attach)."""
    check = root_check(found, host)
    refusal = check.refusal or isolation_refusal(found, host.qubes_platform())
    if refusal:
        raise ShardError(refusal)
    path = default_detached_path(found["merged"])
    named = _shard_ids(selected, _visible(found)) if selected else set()
    write_detached(path, read_detached(path) - named if selected else set())
    startup.clear_fallback(found["merged"])
    merged = found["merged"]
    before = set(menus.merged_qubes(store.load(merged))) if os.path.exists(merged) else set()
    _restart_qubesd(host)
    reason = startup.fallback(merged)
    if reason:
        raise ShardError(reason)
    if not os.path.exists(merged):
        return list(check.warnings)
    after = store.load(merged)
    again = set(menus.merged_qubes(after, named))
    return list(check.warnings) + menus.make_menus(host.desktop(), [
        name for name in menus.merged_qubes(after, gui_in_dom0=True)
        if name not in before or name in again])


def _restart_qubesd(host: Host) -> None:
    """Stop qubesd (its unit dissects), then start it (its unit sutures)."""
    if host.qubesd_active():
        host.qubesd("stop")
    try:
        host.qubesd("start")
    except ShardError:
        if not host.wait_active():  # its unit restarts it, on core only after a failed merge
            raise


def audit_visible(found: Mapping[str, Any], fs_root: str = "/"
                  ) -> tuple[list[audit.Finding], list[Shard]]:
    """Traces of the visible shards under `fs_root`, and those shards."""
    shards = _visible(found)
    try:
        return audit.audit(shards, found["core"], fs_root), shards
    except audit.AuditError as exc:
        raise ShardError(str(exc)) from None

"""reliant-shard: the runtime command line over the shard engine (installed in dom0).

``main(argv, host=None) -> int``: 0 done, 1 refused (a message on stderr says why),
2 bad usage or configuration. Defaults come from the JSON file named by
``$RELIANT_CONFIG`` (default /etc/reliant/reliant.json, optional; keys: core,
merged, roots, max_depth, missing_reference, real_loader_check, policy_dir, services,
libdir, qubes_dir), then from flags. `host` is how the CLI sees qubesd and running qubes
(`Host`); tests pass their own.

Commands: init, suture, dissect, check, status, rename, review, attach, detach, audit,
started (the qubesd unit's: qubesd is ready; see `reliant.shards.startup`).
Offline commands (suture, rename, review, dissect --final) refuse while qubesd is
active: they would race the store qubesd holds.

Output and messages name hidden qubes and shards: callers must not log them to
persistent storage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from reliant import audit, operations, store
from reliant.shards import startup
from reliant.shards.dom0dirs import QUBES_DIR
from reliant.shards.files import FIRST_SHARD_QID, RANGE_SIZE, Shard, discover, init_shard, parse_range
from reliant.shards.real_loader import RealLoader
from reliant.shards.records import qube_name
from reliant.shards.runtime import default_detached_path, read_detached, write_detached
from reliant.shards.suture import MISSING_REFERENCE_MODES
from reliant.vocab import Problem, ShardError, shard_tag

CONFIG_PATH = "/etc/reliant/reliant.json"
DEFAULTS: dict[str, Any] = {
    "core": "/var/lib/qubes/qubes.xml",
    "merged": "/run/reliant/qubes.xml",
    "roots": ["/run/shufflecake"],
    "max_depth": 3,
    "missing_reference": "recover",
    "real_loader_check": True,
    "policy_dir": "/run/qubes/policy.d",
    "services": None,
    "libdir": "/usr/lib/reliant",
    "qubes_dir": QUBES_DIR,
}


class UsageError(Exception):
    """Bad command line or configuration (exit 2)."""


class Host:
    """qubesd and the running qubes, as seen through systemctl and xl/qvm-ls."""

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
        raise ShardError("cannot tell which qubes run (neither xl nor qvm-ls "
                                        "found); refusing to detach")

    def qubesd(self, action: str) -> None:
        try:
            result = subprocess.run(["systemctl", action, "qubesd"], check=False,
                                    capture_output=True, text=True)
        except OSError as exc:
            raise ShardError(f"systemctl {action} qubesd: {exc.strerror}") \
                from None
        if result.returncode:
            raise ShardError(f"systemctl {action} qubesd failed: "
                                            f"{result.stderr.strip() or result.returncode}")

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
    if isinstance(config["roots"], str):
        config["roots"] = [config["roots"]]
    return config


def _roots(text: str) -> list[str]:
    roots = [part for part in text.split(",") if part]
    if not roots:
        raise argparse.ArgumentTypeError("expected DIR[,DIR...]")
    return roots


def _qid_range(text: str) -> tuple[int, int]:
    try:
        return parse_range(text)
    except ShardError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reliant-shard", description=(
        "Merge the qubes of hidden volumes (shards) into qubesd's store and split them "
        "back, leaving no trace of a shard in dom0's persistent storage."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, *, core=False, roots=False, merged=None,
                policy=False) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=text, description=text)
        if core:
            cmd.add_argument("--core", metavar="FILE", help="the core store "
                             "(default /var/lib/qubes/qubes.xml)")
        if roots:
            cmd.add_argument("--roots", type=_roots, metavar="DIR[,DIR]",
                             help="where shards are searched (default /run/shufflecake)")
            cmd.add_argument("--max-depth", type=int, metavar="N",
                             help="how deep under a root (default 3)")
        if merged:
            cmd.add_argument(f"--{merged}", dest="merged", metavar="FILE",
                             help="the merged store qubesd runs on "
                                  "(default /run/reliant/qubes.xml)")
        if policy:
            cmd.add_argument("--policy-dir", metavar="DIR", help="where the runtime qrexec "
                             "policy goes (default /run/qubes/policy.d; '' for none)")
        return cmd

    init = command("init", "create an empty shard in DIR", roots=True)
    init.add_argument("directory", metavar="DIR")
    init.add_argument("--qid-range", type=_qid_range, metavar="A-B",
                      help="QIDs of this shard's qubes (default: the first free block of "
                      f"{RANGE_SIZE} from {FIRST_SHARD_QID})")
    init.add_argument("--depends-on", action="append", default=[], metavar="DIR",
                      help="a shard whose qubes this one may use (repeatable)")
    init.add_argument("--id", dest="shard_id", help="shard id (default: the directory name)")

    suture = command("suture", "write the merged store from core and the visible shards",
                     core=True, roots=True, merged="out", policy=True)
    suture.add_argument("--missing-reference", choices=MISSING_REFERENCE_MODES)
    suture.add_argument("--qubes-dir", metavar="DIR", help="dom0's qubes directory")

    dissect = command("dissect", "write core and each shard back from the merged store",
                      core=True, roots=True, merged="merged")
    dissect.add_argument("--final", action="store_true", help="qubesd has stopped: also "
                         "move shard qubes' dom0 directories out of the qubes directory")
    dissect.add_argument("--qubes-dir", metavar="DIR", help="dom0's qubes directory")

    check = command("check", "report what suture would refuse, recover or renumber",
                    core=True, roots=True, merged="merged")
    check.add_argument("--missing-reference", choices=MISSING_REFERENCE_MODES)

    status = command("status", "visible and merged shards, conflicts, recovered qubes",
                     core=True, roots=True, merged="merged")
    status.add_argument("--json", action="store_true")

    rename = command("rename", "rename a shard qube (e.g. one whose name core took)",
                     core=True, roots=True)
    rename.add_argument("qube", metavar="SHARD-QUBE")
    rename.add_argument("new", metavar="NEW")
    rename.add_argument("--shard", help="id of the shard holding it, if several do")

    review = command("review", "accept a recovered qube: clear the prohibit-start set by "
                     "suture", roots=True)
    review.add_argument("qube", metavar="QUBE")
    review.add_argument("--shard", help="id of the shard holding it, if several do")

    for name, text in (("attach", "merge newly visible (or detached) shards: restart qubesd"),
                       ("detach", "leave shards out (all by default) so that their volumes "
                                  "can be closed: restart qubesd without them")):
        cmd = command(name, text, roots=True, merged="merged")
        cmd.add_argument("shards", nargs="*", metavar="SHARD", help="shard id or directory")

    command("started", "the qubesd unit says qubesd is ready on the merged store",
            merged="merged")

    audit = command("audit", "look for traces of the visible shards outside them",
                    core=True, roots=True)
    audit.add_argument("--json", action="store_true")
    audit.add_argument("--fs-root", default="/", metavar="DIR", help="filesystem to search")
    return parser


def _settings(args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Any]:
    settings = dict(config)
    for key in ("core", "roots", "merged", "max_depth", "policy_dir", "missing_reference",
                "qubes_dir"):
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    if not isinstance(settings["roots"], list) or not all(
            isinstance(r, str) for r in settings["roots"]):
        raise UsageError("roots must be a list of directories")
    if not isinstance(settings["max_depth"], int) or settings["max_depth"] < 0:
        raise UsageError("max_depth must be a non-negative integer")
    return settings


def _real_loader(settings: dict[str, Any]) -> RealLoader | None:
    """qubes-core-admin's loader, unless the setting turns it off."""
    return RealLoader() if settings["real_loader_check"] is True else None


def _refuse_if_qubesd_runs(host: Host, what: str) -> None:
    if host.qubesd_active():
        raise ShardError(f"qubesd is running: {what} needs it stopped "
                                        "(systemctl stop qubesd), else qubesd would overwrite "
                                        "or be confused by the change")


def _print_problems(problems: Sequence[Problem], quiet_info: bool = False) -> None:
    for problem in problems:
        if not (quiet_info and problem.severity == "info"):
            print(f"reliant-shard: {problem}", file=sys.stderr)


def _shard_ids(selected: Sequence[str], shards: Sequence[Shard]) -> set[str]:
    ids = set()
    for item in selected:
        match = [s.id for s in shards if item in (s.id, s.path)
                 or os.path.realpath(item) == os.path.realpath(s.path)]
        if not match:
            raise ShardError(f"no visible shard {item!r}")
        ids.update(match)
    return ids


def _detach(settings: dict[str, Any], args: argparse.Namespace, host: Host) -> int:
    shards = discover(settings["roots"], settings["max_depth"], problems=[])
    ids = _shard_ids(args.shards, shards) if args.shards else {s.id for s in shards}
    if not ids:
        raise ShardError("no visible shard to detach")
    running = host.running_qubes()
    busy = []
    if os.path.exists(settings["merged"]):
        merged = store.load(settings["merged"])
        tags = {shard_tag(i) for i in ids}
        for domain in merged.iterfind("domains/domain"):
            name = qube_name(domain)
            if name in running and any(t.get("name") in tags
                                       for t in domain.iterfind("tags/tag")):
                busy.append(name)
    for shard in shards:
        if shard.id in ids:
            busy += [qube_name(d) for d in shard.domains
                     if qube_name(d) in running]
    if busy:
        raise ShardError(f"qubes of the shards to detach are running: "
                                        f"{', '.join(sorted(set(busy)))}; shut them down first")
    path = default_detached_path(settings["merged"])
    write_detached(path, read_detached(path) | ids)
    _restart(host)
    print(f"detached: {', '.join(sorted(ids))}")
    return 0


def _attach(settings: dict[str, Any], args: argparse.Namespace, host: Host) -> int:
    path = default_detached_path(settings["merged"])
    detached = read_detached(path)
    if args.shards:
        shards = discover(settings["roots"], settings["max_depth"], problems=[])
        detached -= _shard_ids(args.shards, shards)
    else:
        detached = set()
    write_detached(path, detached)
    startup.clear_fallback(settings["merged"])
    _restart(host)
    reason = startup.fallback(settings["merged"])
    if reason:
        raise ShardError(reason)
    return 0


def _restart(host: Host) -> None:
    """Stop qubesd (its unit dissects), then start it (its unit sutures)."""
    if host.qubesd_active():
        host.qubesd("stop")
    try:
        host.qubesd("start")
    except ShardError:
        if not host.wait_active():  # its unit restarts it, on core only after a failed merge
            raise


def _status_text(report: dict[str, Any]) -> str:
    lines = [f"core: {report['core']}",
             f"merged: {report['merged']} ({'present' if report['merged_exists'] else 'absent'})"]
    if report.get("fallback"):
        lines.insert(0, f"FALLBACK: {report['fallback']}")
    for shard in report["shards"]:
        state = "merged" if shard["merged"] else (
            "detached" if shard["id"] in report["detached"] else "not merged")
        qubes = ", ".join(shard.get("qubes", [])) or "-"
        lines.append(f"shard {shard['id']} at {shard['path']}: {state}, qids "
                     f"{shard['qid_range'][0]}-{shard['qid_range'][1]}, qubes: {qubes}")
        if "error" in shard:
            lines.append(f"  error: {shard['error']}")
    for item in report["recovered"]:
        lines.append(f"recovered: {item['qube']} (shard {item['shard']}): "
                     + ", ".join(f"{k}={v}" for k, v in sorted(item["features"].items())))
    for problem in report["problems"]:
        lines.append(f"{problem['severity']}: {problem['message']}")
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: dict[str, Any], host: Host) -> int:
    """Carry out one parsed command; ShardError/StoreError mean refused."""
    roots, depth = settings["roots"], settings["max_depth"]
    if args.command == "init":
        shard = init_shard(args.directory, args.qid_range, args.depends_on,
                                          args.shard_id, roots, depth)
        print(f"shard {shard.id} created in {shard.path} with qids "
              f"{shard.qid_range[0]}-{shard.qid_range[1]}")
        return 0
    if args.command == "suture":
        _refuse_if_qubesd_runs(host, "suture")
        reason = startup.failed_merge(settings["merged"])
        if reason:  # qubesd did not start on the last merged store: core only now
            visible = discover(roots, depth, problems=[])
            path = default_detached_path(settings["merged"])
            write_detached(path, read_detached(path) | {s.id for s in visible})
            startup.fall_back(settings["merged"], reason)
            print(f"reliant-shard: error: {reason}", file=sys.stderr)
        detached = read_detached(
            default_detached_path(settings["merged"]))
        result = operations.suture(
            settings["core"], roots, settings["merged"], max_depth=depth,
            missing_reference=settings["missing_reference"],
            policy_dir=settings["policy_dir"] or None, services=settings["services"],
            qubes_dir=settings["qubes_dir"], detached=detached,
            real_loader=_real_loader(settings))
        startup.begin(settings["merged"], [shard.id for shard in result.shards])
        _print_problems(result.problems)
        return 0
    if args.command == "dissect":
        if args.final:
            _refuse_if_qubesd_runs(host, "dissect --final")
            startup.stopped(settings["merged"], os.environ)
        result = operations.dissect(settings["merged"], settings["core"], roots,
                                        max_depth=depth, qubes_dir=settings["qubes_dir"],
                                        final=args.final)
        _print_problems(result.problems)
        return 1 if result.errors else 0
    if args.command == "check":
        detached = read_detached(
            default_detached_path(settings["merged"]))
        result = operations.check(settings["core"], roots, max_depth=depth,
                                      missing_reference=settings["missing_reference"],
                                      detached=detached, real_loader=_real_loader(settings),
                                      scratch=os.path.dirname(os.path.abspath(
                                          settings["merged"])))
        _print_problems(result.problems)
        bad = [p for p in result.problems if p.severity != "info"]
        print(f"{len(result.shards)} shard(s) can be merged; {len(bad)} problem(s)")
        return 1 if bad else 0
    if args.command == "status":
        report = operations.status(settings["core"], settings["merged"], roots,
                                       max_depth=depth)
        print(json.dumps(report, indent=1, sort_keys=True) if args.json
              else _status_text(report))
        return 0
    if args.command == "rename":
        _refuse_if_qubesd_runs(host, "rename")
        operations.rename_qube(roots, args.qube, args.new, core=settings["core"],
                                   shard_id=args.shard, max_depth=depth)
        print(f"renamed {args.qube} to {args.new}")
        return 0
    if args.command == "review":
        _refuse_if_qubesd_runs(host, "review")
        operations.review_qube(roots, args.qube, shard_id=args.shard, max_depth=depth)
        print(f"{args.qube}: start allowed again")
        return 0
    if args.command == "started":
        startup.started(settings["merged"])
        return 0
    if args.command == "attach":
        return _attach(settings, args, host)
    if args.command == "detach":
        return _detach(settings, args, host)
    return _audit(settings, args)


def _audit(settings: dict[str, Any], args: argparse.Namespace) -> int:
    shards = discover(settings["roots"], settings["max_depth"], problems=[])
    try:
        findings = audit.audit(shards, settings["core"], args.fs_root)
    except audit.AuditError as exc:
        raise ShardError(str(exc)) from None
    if args.json:
        print(json.dumps([{"path": f.path, "reason": f.reason} for f in findings], indent=1))
    else:
        for finding in findings:
            print(f"{finding.path}: {finding.reason}")
        print(f"{len(findings)} finding(s) for {len(shards)} visible shard(s)")
    return 1 if findings else 0


def main(argv: Sequence[str] | None = None, host: Host | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 refused, 2 bad usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        config = load_config(os.environ.get("RELIANT_CONFIG", CONFIG_PATH))
        settings = _settings(args, config)
    except UsageError as exc:
        print(f"reliant-shard: {exc}", file=sys.stderr)
        return 2
    try:
        return run(args, settings, host or Host())
    except (ShardError, store.StoreError) as exc:
        print(f"reliant-shard: refused: {exc}", file=sys.stderr)
        return 1

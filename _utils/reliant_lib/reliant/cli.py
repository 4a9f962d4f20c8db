"""reliant-shard: the runtime command line over the shard engine (installed in dom0).

``main(argv, host=None) -> int``: 0 done, 1 refused (a message on stderr says why),
2 bad usage or configuration. Settings come from the configuration file, then from
flags (`reliant.commands.settings`). `host` is how the CLI sees qubesd and running
qubes (`reliant.commands.Host`); tests pass their own.

Commands: init, suture, dissect, check, status, rename, review, adopt, release, attach,
detach, audit, started (the qubesd unit's: qubesd is ready, `reliant.shards.startup`).
Offline commands (suture, rename, review, adopt, release, dissect --final)
refuse while qubesd is active: they would race the store qubesd holds. Off the volatile
root, `attach` refuses and suture merges core alone, unless require_volatile is false
(then they warn).

Output and messages name hidden qubes and shards: callers must not log them to
persistent storage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from reliant import commands, store
from reliant.shards.files import FIRST_SHARD_QID, RANGE_SIZE, parse_range
from reliant.shards.suture import MISSING_REFERENCE_MODES
from reliant.vocab import Problem, ShardError

#: Settings a flag may set (`commands.settings`).
_OVERRIDES = ("core", "roots", "merged", "max_depth", "policy_dir", "missing_reference",
              "qubes_dir")


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

    for name, text in (("adopt", "move core qubes whose data lives in a shard's directory "
                                 "into that shard"),
                       ("release", "move shard qubes back into core")):
        cmd = command(name, text, core=True, roots=True, merged="merged")
        cmd.add_argument("qubes", nargs="+", metavar="QUBE")
        cmd.add_argument("--shard", required=name == "adopt", help="shard id or directory"
                         + ("" if name == "adopt" else " (default: the one holding the qubes)"))
        cmd.add_argument("--qubes-dir", metavar="DIR", help="dom0's qubes directory")

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


def _print_problems(problems: Sequence[Problem], quiet_info: bool = False) -> None:
    for problem in problems:
        if not (quiet_info and problem.severity == "info"):
            print(f"reliant-shard: {problem}", file=sys.stderr)


def _warn(warnings: Sequence[str]) -> None:
    for warning in warnings:
        print(f"reliant-shard: warning: {warning}", file=sys.stderr)


def _status_text(report: dict[str, Any]) -> str:
    lines = [f"core: {report['core']}",
             f"merged: {report['merged']} ({'present' if report['merged_exists'] else 'absent'})"]
    found = report["platform"]
    lines.append(f"platform: Qubes R{found['release'] or '?'} (" + ", ".join(
        f"{name} {version}" for name, version in found["packages"].items()) + ")")
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


def run(args: argparse.Namespace, found: dict[str, Any], host: commands.Host) -> int:
    """Carry out one parsed command; one of commands.REFUSALS means refused."""
    if args.command == "init":
        shard = commands.init(found, args.directory, args.qid_range, args.depends_on,
                              args.shard_id)
        print(f"shard {shard.id} created in {shard.path} with qids "
              f"{shard.qid_range[0]}-{shard.qid_range[1]}")
        return 0
    if args.command == "suture":
        _print_problems(commands.suture(found, host).problems)
        return 0
    if args.command == "dissect":
        result = commands.dissect(found, host, final=args.final)
        _print_problems(result.problems)
        return 1 if result.errors else 0
    if args.command == "check":
        result = commands.check(found, host)
        _print_problems(result.problems)
        bad = [p for p in result.problems if p.severity != "info"]
        print(f"{len(result.shards)} shard(s) can be merged; {len(bad)} problem(s)")
        return 1 if bad else 0
    if args.command == "status":
        report = commands.status(found, host)
        print(json.dumps(report, indent=1, sort_keys=True) if args.json
              else _status_text(report))
        return 0
    if args.command == "rename":
        commands.rename(found, host, args.qube, args.new, args.shard)
        print(f"renamed {args.qube} to {args.new}")
        return 0
    if args.command == "review":
        commands.review(found, host, args.qube, args.shard)
        print(f"{args.qube}: start allowed again")
        return 0
    if args.command in ("adopt", "release"):
        move = commands.adopt if args.command == "adopt" else commands.release
        result = move(found, host, args.qubes, args.shard)
        _print_problems(result.problems)
        if result.shards:
            where = "into" if args.command == "adopt" else "out of"
            print(f"{args.command}: {', '.join(args.qubes)} {where} shard "
                  f"{result.shards[0].id}")
        return 0
    if args.command == "started":
        commands.started(found)
        return 0
    if args.command == "attach":
        _warn(commands.attach(found, host, args.shards))
        return 0
    if args.command == "detach":
        ids, warnings = commands.detach(found, host, args.shards)
        _warn(warnings)
        print(f"detached: {', '.join(sorted(ids))}")
        return 0
    _warn(commands.root_check(found, host).warnings)
    findings, shards = commands.audit_visible(found, args.fs_root)
    if args.json:
        print(json.dumps([{"path": f.path, "reason": f.reason} for f in findings], indent=1))
    else:
        for finding in findings:
            print(f"{finding.path}: {finding.reason}")
        print(f"{len(findings)} finding(s) for {len(shards)} visible shard(s)")
    return 1 if findings else 0


def main(argv: Sequence[str] | None = None, host: commands.Host | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 refused, 2 bad usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    overrides = {key: getattr(args, key, None) for key in _OVERRIDES}
    try:
        found = commands.settings(overrides=overrides)
    except commands.UsageError as exc:
        print(f"reliant-shard: {exc}", file=sys.stderr)
        return 2
    try:
        return run(args, found, host or commands.Host())
    except OSError as exc:  # never a traceback: the path and the reason
        print(f"reliant-shard: refused: {store.os_message(exc)}", file=sys.stderr)
        return 1
    except commands.REFUSALS as exc:
        print(f"reliant-shard: refused: {exc}", file=sys.stderr)
        return 1

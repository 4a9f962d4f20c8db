#!/usr/bin/env python3
"""Run the kitchen.yml suites with podman, as Test Kitchen + kitchen-salt would.

Each suite runs on each platform it includes (a platform is a Qubes release: its own
dom0 image), as the instance SUITE-PLATFORM (Test Kitchen's name: dots dropped). For
each instance: create a container playing dom0 (systemd as PID 1); install the formula
as a dom0 package does, either `make install` with the suite's pillar (default) or,
with `reliant_install: rpm` under the suite's provisioner, the payload of the RPM that
`make rpm` builds plus its %post scriptlet; `qubesctl top.enable reliant` (state and
pillar); run `test=True` (its predictions must be exactly the states that the converge
then changes), converge with `salt-call --local --retcode-passthrough
state.highstate`, converge again (must report zero changes), run `test=True` (must
predict zero changes), run the verifier command of kitchen.yml on this host, and
always destroy the container. Every highstate must succeed, except that on a platform
listed under the suite's `reliant_failing_states` (provisioner key read by this runner
only) exactly the states listed there must fail: what a Qubes release cannot do.

    run.py [SUITE|INSTANCE ...] [--keep] [--converge-only] [--kitchen FILE]
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR = ROOT / "tests" / "kitchen" / "image"
# Where the package puts the pillar a suite replaces (FORMULA: pillar_dir).
PILLAR_FILE = "/srv/pillar/base/reliant/init.sls"
# Inputs of the dom0 layer: context name -> repository path.
DOM0_FILES = {
    "Containerfile": "tests/kitchen/image/Containerfile.dom0",
    "dom0": "tests/kitchen/image/dom0",
    "dom0-r4.2": "tests/kitchen/image/dom0-r4.2",
    "dom0-r4.3": "tests/kitchen/image/dom0-r4.3",
    "qubes.xml": "tests/fixtures/qubes-r4.3-core.xml",
    "qubesd_double.py": "tests/doubles/qubesd/qubesd_double.py",
    "qubesd_load.py": "_utils/reliant_lib/reliant/qubesd_load.py",
    "qubesd_schema.py": "_utils/reliant_lib/reliant/qubesd_schema.py",
    "qubesd.service": "tests/doubles/qubesd/qubesd.service",
    "dom0-boot": "tests/doubles/dom0-boot",
    "rpm": "tests/doubles/rpm/rpm",
    "topd.py": "tests/doubles/topd/topd.py",
}
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
"""


class SuiteFailed(Exception):
    """A step of a suite failed; the message says which and why."""


def log(message: str) -> None:
    print(f"[kitchen] {message}", flush=True)


def podman(*args: str, check: bool = True, capture: bool = True,
           stdin: bytes | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run podman with the runc runtime configuration this machine needs."""
    proc = subprocess.run(["podman", *args], input=stdin, capture_output=capture, timeout=timeout)
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if capture else ""
        raise SuiteFailed(f"podman {' '.join(args[:3])}... failed ({proc.returncode}): {err}")
    return proc


def tree_digest(paths: list[Path]) -> str:
    """A digest of file names, modes and contents under `paths`."""
    digest = hashlib.sha256()
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(oct(path.stat().st_mode & 0o111).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def ensure_images(image: str, salt_version: str, release: str) -> None:
    """Build the base image and the dom0 layer of Qubes `release` when missing or out of date."""
    base_script = IMAGE_DIR / "build-base.sh"
    base = f"localhost/reliant-base:{tree_digest([base_script])}-{salt_version}"
    dom0_inputs = [ROOT / path for path in DOM0_FILES.values()]
    dom0_digest = f"{base}/r{release}/{tree_digest(dom0_inputs)}"
    with open("/var/tmp/reliant-kitchen-image.lock", "w") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        if not image_exists(base):
            log(f"building base image {base} (debootstrap + salt: takes a few minutes)")
            subprocess.run(["bash", str(base_script), base, salt_version], check=True)
        current = podman("image", "inspect", "--format", "{{ index .Labels \"reliant.inputs\" }}",
                         image, check=False)
        if current.returncode == 0 and current.stdout.decode().strip() == dom0_digest:
            return
        log(f"building dom0 layer {image}")
        with tempfile.TemporaryDirectory() as context:
            for name, path in DOM0_FILES.items():
                source = ROOT / path
                if source.is_dir():
                    shutil.copytree(source, Path(context, name), symlinks=True)
                else:
                    shutil.copy2(source, Path(context, name))
            podman("build", "-q", "--build-arg", f"BASE={base}", "--build-arg",
                   f"RELEASE={release}", "--label", f"reliant.inputs={dom0_digest}",
                   "-t", image, context, timeout=1200)


def tree_tar(root: Path, replace: dict[str, Path] | None = None) -> bytes:
    """A tar of the tree under `root` as `/...` paths; `replace`: path -> file to put there."""
    replace = replace or {}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(root.rglob("*")):
            name = "/" + str(path.relative_to(root))
            if "__pycache__" in path.parts or name in replace:
                continue
            tar.add(path, arcname=name, recursive=False)
        for name, source in replace.items():
            tar.add(source, arcname=name)
    return buffer.getvalue()


def make_install(pillar_file: Path) -> bytes:
    """`make install` into a fresh DESTDIR (FORMULA's layout), with the suite's pillar."""
    with tempfile.TemporaryDirectory() as destdir:
        subprocess.run(["make", "-s", "-C", str(ROOT), "install", f"DESTDIR={destdir}"],
                       check=True, capture_output=True)
        return tree_tar(Path(destdir), {PILLAR_FILE: pillar_file})


def formula_value(key: str) -> str:
    """One line of FORMULA (`key: value`)."""
    match = re.search(rf"^{re.escape(key)}: *(.*)$", (ROOT / "FORMULA").read_text(), re.MULTILINE)
    if not match:
        raise SuiteFailed(f"FORMULA has no {key}")
    return match.group(1).strip()


def built_rpm() -> Path:
    """The package `make rpm` builds from the work tree (built now, so never stale)."""
    proc = subprocess.run(["make", "-s", "-C", str(ROOT), "rpm"], capture_output=True)
    if proc.returncode != 0:
        raise SuiteFailed(f"make rpm failed:\n{proc.stdout.decode()}{proc.stderr.decode()}")
    name = "-".join(formula_value(key) for key in ("package-name", "version", "release"))
    return ROOT / "build" / f"{name}.noarch.rpm"


def rpm_payload(rpm: Path) -> bytes:
    """The files of the package, as `rpm2cpio | cpio` unpacks them."""
    with tempfile.TemporaryDirectory() as root:
        unpack = subprocess.run(f"rpm2cpio {shlex.quote(str(rpm))} | cpio -idm --quiet",
                                shell=True, cwd=root, capture_output=True)
        if unpack.returncode != 0:
            raise SuiteFailed(f"rpm2cpio | cpio failed: {unpack.stderr.decode()}")
        return tree_tar(Path(root))


def rpm_scriptlets(rpm: Path) -> dict[str, str]:
    """The package's scriptlets by rpm's name for them (`postinstall`, `preuninstall`, ...),
    from `rpm -qp --scripts`: the spec stays their single source."""
    out = subprocess.run(["rpm", "-qp", "--scripts", str(rpm)], check=True,
                         capture_output=True).stdout.decode()
    scripts: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        header = re.fullmatch(r"(\w+) scriptlet \(using /bin/sh\):", line)
        if header:
            current = scripts.setdefault(header.group(1), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) + "\n" for name, lines in scripts.items()}


class Instance:
    """One suite's dom0 container."""

    def __init__(self, suite: str, platform: str, image: str, privileged: bool):
        self.suite, self.platform, self.image, self.privileged = suite, platform, image, privileged
        self.name = instance_name(suite, platform)

    def exec(self, *command: str, check: bool = True, timeout: int = 900) -> str:
        proc = podman("exec", self.name, *command, check=False, timeout=timeout)
        out = proc.stdout.decode(errors="replace")
        if check and proc.returncode != 0:
            raise SuiteFailed(f"{' '.join(command)} exited {proc.returncode}:\n{out}"
                              f"{proc.stderr.decode(errors='replace')}")
        return out

    def create(self) -> None:
        podman("rm", "-f", self.name, check=False)
        flags = ["--privileged"] if self.privileged else []
        podman("run", "-d", "--name", self.name, "--hostname", "dom0", "--systemd", "always",
               *flags, self.image)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            state = podman("exec", self.name, "systemctl", "is-system-running",
                           check=False).stdout.decode().strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.5)
        raise SuiteFailed(f"systemd in {self.name} did not come up (state {state!r})")

    def install(self, pillar_file: Path) -> None:
        """`make install` with the suite's pillar, then enable the state and pillar tops."""
        self.unpack(make_install(pillar_file))
        self.enable_tops()

    def install_rpm(self, rpm: Path) -> None:
        """The RPM's files and its %post, as `dnf install` runs them, then enable the tops:
        %post must have synced the formula's modules and enabled both tops already."""
        self.unpack(rpm_payload(rpm))
        self.scriptlet(rpm_scriptlets(rpm)["postinstall"], "1")  # $1 = 1: first install
        modules = json.loads(self.exec("salt-call", "--local", "--out", "json",
                                       "sys.list_modules"))["local"]
        if "reliant_config" not in modules:
            raise SuiteFailed("%post did not sync the formula's modules")
        if self.enable_tops() != ["unchanged", "unchanged"]:
            raise SuiteFailed("%post did not enable the state and pillar tops")

    def unpack(self, tar: bytes) -> None:
        podman("exec", "-i", self.name, "tar", "-x", "-C", "/", stdin=tar)

    def scriptlet(self, script: str, argument: str) -> None:
        """Run a package scriptlet with /bin/sh, as rpm does (`$1`: `argument`)."""
        podman("exec", "-i", self.name, "/bin/sh", "-s", argument, stdin=script.encode())

    def enable_tops(self) -> list[str]:
        """`qubesctl top.enable reliant` and its pillar twin: topd's status for each.
        topd's refusal is no exit status, so its `error` in the output fails the suite."""
        statuses = []
        for extra in ((), ("pillar=true",)):
            out = self.exec("qubesctl", "--out", "json", "top.enable", "reliant", *extra)
            result = json.loads(out)["local"]
            if "error" in result:
                raise SuiteFailed(f"qubesctl top.enable reliant {' '.join(extra)}: {out}")
            statuses.append(result["reliant.top"]["status"])
        return statuses

    def highstate(self, *extra: str, failing: frozenset[str] = frozenset()) -> dict:
        """A highstate whose JSON return is parsed; it fails the suite unless the states
        that failed are exactly `failing`."""
        proc = podman("exec", self.name, "salt-call", "--local", "--retcode-passthrough",
                      "--out", "json", "--log-level", "warning", "state.highstate", *extra,
                      check=False)
        out = proc.stdout.decode(errors="replace")
        try:
            states = json.loads(out)["local"]
        except (json.JSONDecodeError, KeyError, TypeError):
            states = None
        wrong = unexpected_failures(proc.returncode, states, failing)
        if wrong:
            raise SuiteFailed(f"highstate {' '.join(extra)} failed (exit {proc.returncode})"
                              f"{wrong}:\n{out if not isinstance(states, dict) else ''}"
                              f"{proc.stderr.decode(errors='replace')[-2000:]}")
        return states

    def destroy(self) -> None:
        podman("rm", "-f", "-t", "2", self.name, check=False)


def changed_ids(states: dict) -> set[str]:
    """Ids of the states that changed something, or (test=True) would."""
    return {ret["__id__"] for ret in states.values()
            if ret.get("changes") or ret.get("result") is None}


def changed_states(states: dict) -> list[str]:
    """States that reported changes, or (test=True) predicted some."""
    return [f"{ret.get('__id__')}: {ret.get('comment')}" for ret in states.values()
            if ret.get("changes") or ret.get("result") is None]


def summary(states: dict) -> str:
    ok = sum(1 for ret in states.values() if ret.get("result"))
    changed = sum(1 for ret in states.values() if ret.get("changes"))
    lines = [f"  {ret['__id__']}: {'changed' if ret.get('changes') else 'ok'}"
             f" - {str(ret.get('comment', '')).splitlines()[0][:90] if ret.get('comment') else ''}"
             for ret in sorted(states.values(), key=lambda r: r.get("__run_num__", 0))]
    return "\n".join([*lines, f"  Succeeded: {ok} (changed={changed}), Failed: "
                      f"{len(states) - ok}, Total: {len(states)}"])


def merged(base: dict, override: dict) -> dict:
    """kitchen.yml semantics: suite settings override the global ones key by key."""
    result = dict(base)
    for key, value in override.items():
        result[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return result


def instance_name(suite: str, platform: str) -> str:
    """Test Kitchen's name of the instance of `suite` on `platform`."""
    return re.sub(r"[_,/]", "-", f"{suite}-{platform}").replace(".", "")


def suite_platforms(config: dict, suite: dict) -> list[dict]:
    """The platforms a suite runs on (Test Kitchen's `includes` / `excludes`)."""
    return [platform for platform in config["platforms"]
            if platform["name"] in suite.get("includes", [platform["name"]])
            and platform["name"] not in suite.get("excludes", [])]


def unexpected_failures(returncode: int, states: object, failing: frozenset[str]) -> str:
    """What is wrong with a highstate's outcome ("" when nothing): it must have returned
    its states, and exactly the states `failing` failed (salt-call then exits non-zero)."""
    if not isinstance(states, dict):
        return ": no state return"
    failed = {ret.get("__id__"): ret.get("comment") for ret in states.values()
              if ret.get("result") is False}
    if set(failed) == failing and (returncode != 0) == bool(failing):
        return ""
    expected = f" (expected to fail: {', '.join(sorted(failing)) or 'none'})"
    return expected + "".join(f"\n  {name}: {comment}" for name, comment in failed.items())


def expected_failures(provisioner: dict, platform: dict) -> frozenset[str]:
    """The states that must fail on `platform`: the suite's `reliant_failing_states`
    (platform name -> state ids; a key only this runner reads)."""
    return frozenset(provisioner.get("reliant_failing_states", {}).get(platform["name"], ()))


def qubes_release(platform: dict) -> str:
    """The Qubes release a platform plays (its `qubes_release`, read by this runner only)."""
    return str(platform["qubes_release"])


def run_suite(config: dict, suite: dict, platform: dict, keep: bool, converge_only: bool) -> None:
    driver = merged(merged(config.get("driver", {}), platform.get("driver", {})),
                    suite.get("driver", {}))
    provisioner = merged(config.get("provisioner", {}), suite.get("provisioner", {}))
    verifier = merged(config.get("verifier", {}), suite.get("verifier", {}))
    instance = Instance(suite["name"], platform["name"], driver["image"],
                        bool(driver.get("privileged")))
    failing = expected_failures(provisioner, platform)
    env = {**os.environ, "KITCHEN_SUITE": instance.suite, "KITCHEN_INSTANCE": instance.name,
           "KITCHEN_PLATFORM": instance.platform,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        log(f"{instance.name}: create")
        instance.create()
        if provisioner.get("reliant_install") == "rpm":
            rpm = built_rpm()
            env["RELIANT_RPM"] = str(rpm)
            log(f"{instance.name}: converge (payload and %post of {rpm.name})")
            instance.install_rpm(rpm)
        else:
            pillar_file = ROOT / provisioner["pillars_from_files"]["reliant.sls"]  # may be absolute
            log(f"{instance.name}: converge (pillar {pillar_file})")
            instance.install(pillar_file)
        predicted = None if converge_only else changed_ids(
            instance.highstate("test=True", failing=failing))
        states = instance.highstate(failing=failing)
        print(summary(states), flush=True)
        if converge_only:
            return
        if predicted != changed_ids(states):
            raise SuiteFailed(
                "test=True before converge did not predict the changes exactly:\n"
                f"  predicted, not changed: {sorted(predicted - changed_ids(states))}\n"
                f"  changed, not predicted: {sorted(changed_ids(states) - predicted)}")
        log(f"{instance.name}: converge again (must change nothing)")
        again = changed_states(instance.highstate(failing=failing))
        if again:
            raise SuiteFailed("second highstate reported changes:\n  " + "\n  ".join(again))
        log(f"{instance.name}: test=True (must predict nothing)")
        predicted = changed_states(instance.highstate("test=True", failing=failing))
        if predicted:
            raise SuiteFailed("test=True predicted changes:\n  " + "\n  ".join(predicted))
        log(f"{instance.name}: verify")
        command = expand(verifier["command"], env)
        if subprocess.run(command, shell=True, cwd=ROOT, env=env).returncode != 0:
            raise SuiteFailed("verify failed")
    finally:
        if keep:
            log(f"{instance.name}: kept (podman rm -f {instance.name})")
        else:
            log(f"{instance.name}: destroy")
            instance.destroy()


def expand(text: str, env: dict) -> str:
    """Substitute ${NAME} as Test Kitchen's shell verifier environment would."""
    for key, value in env.items():
        text = text.replace("${" + key + "}", value)
    return text


def use_runc_config() -> None:
    """Point podman at the runc runtime configuration this machine needs, unless set."""
    if "CONTAINERS_CONF" not in os.environ:
        conf = Path("/var/tmp/reliant-containers.conf")
        conf.write_text(CONTAINERS_CONF)
        os.environ["CONTAINERS_CONF"] = str(conf)


def load_config(path: Path) -> dict:
    """kitchen.yml as a dict."""
    return yaml.safe_load(path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*",
                        help="suite names (each on its platforms) or instance names (default: all)")
    parser.add_argument("--kitchen", type=Path, default=ROOT / "kitchen.yml")
    parser.add_argument("--keep", action="store_true", help="keep the containers")
    parser.add_argument("--converge-only", action="store_true",
                        help="create and converge only, print the summary, destroy")
    args = parser.parse_args(argv)
    use_runc_config()
    config = load_config(args.kitchen)
    instances = {instance_name(suite["name"], platform["name"]): (suite, platform)
                 for suite in config["suites"] for platform in suite_platforms(config, suite)}
    chosen = [name for name, (suite, _) in instances.items()
              if not args.suites or suite["name"] in args.suites or name in args.suites]
    unknown = [name for name in args.suites
               if name not in instances and name not in {suite["name"] for suite in config["suites"]}]
    if unknown:
        parser.error(f"unknown suite(s) or instance(s) {', '.join(unknown)}; "
                     f"kitchen.yml has {', '.join(instances)}")
    salt_version = str(config["provisioner"]["salt_version"])
    for platform in {instances[name][1]["name"]: instances[name][1] for name in chosen}.values():
        ensure_images(platform["driver"]["image"], salt_version, qubes_release(platform))
    failures = {}
    for name in chosen:
        suite, platform = instances[name]
        try:
            run_suite(config, suite, platform, args.keep, args.converge_only)
            log(f"{name}: passed")
        except (SuiteFailed, subprocess.TimeoutExpired) as error:
            failures[name] = str(error)
            log(f"{name}: FAILED: {error}")
    print(f"kitchen: {len(chosen) - len(failures)} passed, {len(failures)} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

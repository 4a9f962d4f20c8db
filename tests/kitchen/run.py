#!/usr/bin/env python3
"""Run the kitchen.yml suites with podman, as Test Kitchen + kitchen-salt would.

For each suite: create a container playing dom0 (systemd as PID 1), install the
formula and the suite's pillar the way a dom0 package does, run `test=True` (its
predictions must be exactly the states that the converge then changes), converge with
`salt-call --local --retcode-passthrough state.highstate`, converge again (must
report zero changes), run `test=True` (must predict zero changes), run the
verifier command of kitchen.yml on this host, and always destroy the container.

    run.py [SUITE ...] [--keep] [--converge-only] [--kitchen FILE]
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
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
FORMULA_DIR = "/srv/formulas/base/reliant-formula"
# What a dom0 package of the formula installs (FORMULA: formula-files, pillar-files).
FORMULA_FILES = {"salt/reliant": "reliant", "salt/reliant.top": "reliant.top",
                 "_modules": "_modules", "_states": "_states", "_utils": "_utils", "bin": "bin"}
# Inputs of the dom0 layer: context name -> repository path.
DOM0_FILES = {
    "Containerfile": "tests/kitchen/image/Containerfile.dom0",
    "dom0": "tests/kitchen/image/dom0",
    "qubes.xml": "tests/fixtures/qubes-r4.3-core.xml",
    "qubesd_double.py": "tests/doubles/qubesd/qubesd_double.py",
    "qubesd_load.py": "_utils/reliant_lib/reliant/qubesd_load.py",
    "qubesd.service": "tests/doubles/qubesd/qubesd.service",
    "dom0-boot": "tests/doubles/dom0-boot",
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


def ensure_images(image: str, salt_version: str) -> None:
    """Build the base image and the dom0 layer when missing or out of date."""
    base_script = IMAGE_DIR / "build-base.sh"
    base = f"localhost/reliant-base:{tree_digest([base_script])}-{salt_version}"
    dom0_inputs = [ROOT / path for path in DOM0_FILES.values()]
    dom0_digest = f"{base}/{tree_digest(dom0_inputs)}"
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
            podman("build", "-q", "--build-arg", f"BASE={base}", "--label",
                   f"reliant.inputs={dom0_digest}", "-t", image, context, timeout=1200)


def formula_tar(pillar_file: Path) -> bytes:
    """The formula and the suite's pillar laid out as a dom0 package installs them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for source, target in FORMULA_FILES.items():
            if (ROOT / source).exists():
                tar.add(ROOT / source, arcname=f"{FORMULA_DIR}/{target}",
                        filter=lambda info: None if "__pycache__" in info.name else info)
        tar.add(ROOT / "pillar" / "reliant.top", arcname="/srv/pillar/base/reliant.top")
        tar.add(pillar_file, arcname="/srv/pillar/base/reliant/init.sls")
    return buffer.getvalue()


class Instance:
    """One suite's dom0 container."""

    def __init__(self, suite: str, platform: str, image: str, privileged: bool):
        self.suite, self.image, self.privileged = suite, image, privileged
        self.name = f"{suite}-{platform}"

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
        podman("exec", "-i", self.name, "tar", "-x", "-C", "/", stdin=formula_tar(pillar_file))
        self.exec("qubesctl", "top.enable", "reliant")
        self.exec("qubesctl", "top.enable", "reliant", "pillar=true")

    def highstate(self, *extra: str) -> dict:
        """A highstate whose JSON return is parsed; a failed state fails the suite."""
        proc = podman("exec", self.name, "salt-call", "--local", "--retcode-passthrough",
                      "--out", "json", "--log-level", "warning", "state.highstate", *extra,
                      check=False)
        out = proc.stdout.decode(errors="replace")
        try:
            states = json.loads(out)["local"]
        except (json.JSONDecodeError, KeyError, TypeError):
            states = None
        if proc.returncode != 0 or not isinstance(states, dict):
            failed = out
            if isinstance(states, dict):
                failed = "\n".join(f"  {ret.get('__id__')}: {ret.get('comment')}"
                                   for ret in states.values() if ret.get("result") is False)
            raise SuiteFailed(f"highstate {' '.join(extra)} failed (exit {proc.returncode}):\n"
                              f"{failed}\n{proc.stderr.decode(errors='replace')[-2000:]}")
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


def run_suite(config: dict, suite: dict, keep: bool, converge_only: bool) -> None:
    platform = config["platforms"][0]
    driver = merged(merged(config.get("driver", {}), platform.get("driver", {})),
                    suite.get("driver", {}))
    provisioner = merged(config.get("provisioner", {}), suite.get("provisioner", {}))
    verifier = merged(config.get("verifier", {}), suite.get("verifier", {}))
    pillar_file = ROOT / provisioner["pillars_from_files"]["reliant.sls"]  # may be absolute
    instance = Instance(suite["name"], platform["name"], driver["image"],
                        bool(driver.get("privileged")))
    try:
        log(f"{instance.name}: create")
        instance.create()
        log(f"{instance.name}: converge (pillar {pillar_file})")
        instance.install(pillar_file)
        predicted = None if converge_only else changed_ids(instance.highstate("test=True"))
        states = instance.highstate()
        print(summary(states), flush=True)
        if converge_only:
            return
        if predicted != changed_ids(states):
            raise SuiteFailed(
                "test=True before converge did not predict the changes exactly:\n"
                f"  predicted, not changed: {sorted(predicted - changed_ids(states))}\n"
                f"  changed, not predicted: {sorted(changed_ids(states) - predicted)}")
        log(f"{instance.name}: converge again (must change nothing)")
        again = changed_states(instance.highstate())
        if again:
            raise SuiteFailed("second highstate reported changes:\n  " + "\n  ".join(again))
        log(f"{instance.name}: test=True (must predict nothing)")
        predicted = changed_states(instance.highstate("test=True"))
        if predicted:
            raise SuiteFailed("test=True predicted changes:\n  " + "\n  ".join(predicted))
        log(f"{instance.name}: verify")
        env = {**os.environ, "KITCHEN_SUITE": instance.suite, "KITCHEN_INSTANCE": instance.name,
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
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
    parser.add_argument("suites", nargs="*", help="suite names (default: all)")
    parser.add_argument("--kitchen", type=Path, default=ROOT / "kitchen.yml")
    parser.add_argument("--keep", action="store_true", help="keep the containers")
    parser.add_argument("--converge-only", action="store_true",
                        help="create and converge only, print the summary, destroy")
    args = parser.parse_args(argv)
    use_runc_config()
    config = load_config(args.kitchen)
    suites = {suite["name"]: suite for suite in config["suites"]}
    unknown = [name for name in args.suites if name not in suites]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; kitchen.yml has {', '.join(suites)}")
    ensure_images(config["platforms"][0]["driver"]["image"],
                  str(config["provisioner"]["salt_version"]))
    failures = {}
    for name in args.suites or list(suites):
        try:
            run_suite(config, suites[name], args.keep, args.converge_only)
            log(f"{name}: passed")
        except (SuiteFailed, subprocess.TimeoutExpired) as error:
            failures[name] = str(error)
            log(f"{name}: FAILED: {error}")
    ran = len(args.suites or suites)
    print(f"kitchen: {ran - len(failures)} passed, {len(failures)} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

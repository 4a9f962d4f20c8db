"""The Qubes dom0s the tests play, R4.2 and R4.3, read from the kitchen images (their
/etc/qubes-release and the rpm double's package list): one source for the release and
the package versions in unit, functional and kitchen tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from reliant import platform
from repo_paths import ROOT

IMAGE_DIR = ROOT / "tests" / "kitchen" / "image"
RPM_DOUBLE = ROOT / "tests" / "doubles" / "rpm" / "rpm"


def release_file(release: str) -> Path:
    """The image's /etc/qubes-release."""
    return IMAGE_DIR / f"dom0-r{release}" / "etc" / "qubes-release"


def packages_file(release: str) -> Path:
    """The image's package list, which the rpm double answers from."""
    return IMAGE_DIR / f"dom0-r{release}" / "var" / "lib" / "rpm-double" / "packages"


def image_platform(release: str) -> platform.Platform:
    """What `reliant.platform.read` finds in the dom0 container of `release`."""
    versions = {}
    for line in packages_file(release).read_text().splitlines():
        fields = line.split()
        if fields and not line.startswith("#") and fields[0] in platform.PACKAGES:
            versions[fields[0]] = platform.parse_version(fields[1])
    return platform.Platform(platform.parse_release(release_file(release).read_text()),
                             versions)


R42 = image_platform("4.2")
R43 = image_platform("4.3")


def rpm_double(directory: Path, release: str) -> Path:
    """A copy of the rpm double in `directory` that answers with the packages of `release`
    (the list beside it): what a minion's `reliant_rpm` may name."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy2(RPM_DOUBLE, directory / "rpm")
    shutil.copy2(packages_file(release), directory / "packages")
    return directory / "rpm"


def minion_opts(directory: Path, release: str = "4.3") -> dict[str, str]:
    """The minion options that make the formula's modules see a dom0 of `release`."""
    return {"reliant_dom0_marker": str(release_file(release)),
            "reliant_rpm": str(rpm_double(directory, release))}

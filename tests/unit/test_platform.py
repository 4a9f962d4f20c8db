"""reliant.platform: the release file and rpm's answers (through the rpm double, as each
dom0 image gives them), and which facts hold on which dom0."""

from __future__ import annotations

import pytest
import qubes_platforms
from reliant import platform
from reliant.platform import (
    FILE_SNAPSHOTS_DISABLED,
    PROHIBIT_START,
    RUNTIME_POLICY_DIR,
    SAVE_ON_SIGTERM,
    Platform,
)


@pytest.mark.parametrize(("text", "release"), [
    ("Qubes release 4.2.4 (R4.2)\n", (4, 2)),
    ("Qubes release 4.3.0 (R4.3)\n", (4, 3)),
    ("Qubes release 4.3 (test root)\n", (4, 3)),
    ("Fedora release 41 (Forty One)\n", None),
    ("", None),
])
def test_release_file(tmp_path, text, release):
    path = tmp_path / "qubes-release"
    path.write_text(text)
    found, why = platform.read_release(str(path))
    assert found == release
    assert (why is None) == (release is not None)
    if release is None:
        assert why == f"{path}: names no Qubes release"


def test_a_missing_release_file_says_so(tmp_path):
    assert platform.read_release(str(tmp_path / "absent")) == (
        None, f"{tmp_path / 'absent'}: No such file or directory")


@pytest.mark.parametrize(("text", "version"), [
    ("4.3.12", (4, 3, 12)), ("4.2.39\n", (4, 2, 39)), ("4", (4,)),
    ("4.3.0rc1", None), ("(none)", None), ("", None), ("4..3", None),
])
def test_versions(text, version):
    assert platform.parse_version(text) == version


@pytest.mark.parametrize("release", ["4.2", "4.3"])
def test_read_finds_what_each_dom0_image_holds(tmp_path, release):
    opts = qubes_platforms.minion_opts(tmp_path, release)
    found = platform.read(opts["reliant_dom0_marker"], opts["reliant_rpm"])
    assert found == qubes_platforms.image_platform(release)
    assert found.release == tuple(int(p) for p in release.split("."))
    assert set(found.versions) == {"qubes-core-dom0", "qubes-core-qrexec"}
    assert found.unread == ()


def test_rpm_without_the_packages_leaves_them_unread(tmp_path):
    rpm = qubes_platforms.rpm_double(tmp_path, "4.3")
    (tmp_path / "packages").write_text("qubes-core-qrexec 4.3.12 1.fc41 x86_64\n")
    versions, unread = platform.read_versions(rpm=str(rpm))
    assert versions == {"qubes-core-qrexec": (4, 3, 12)}
    assert unread == ["rpm -q qubes-core-dom0: not installed"]


def test_no_rpm_at_all(tmp_path):
    versions, unread = platform.read_versions(rpm=str(tmp_path / "no-rpm"))
    assert versions == {} and unread == ["rpm -q: No such file or directory"]


# --- which facts hold -----------------------------------------------------------------------

R42, R43 = qubes_platforms.R42, qubes_platforms.R43


def test_r42_has_none_of_the_r43_facts_and_r43_has_them_all():
    for fact in (RUNTIME_POLICY_DIR, PROHIBIT_START, SAVE_ON_SIGTERM, FILE_SNAPSHOTS_DISABLED):
        assert R42.has(fact) is False and R43.has(fact) is True
        assert R43.lacks(fact) is None
    assert R42.lacks(RUNTIME_POLICY_DIR) == (
        "qubes-core-qrexec 4.2.25 has no runtime qrexec policy directory /run/qubes/policy.d "
        "(it starts at qubes-core-qrexec 4.3.0)")
    assert R42.lacks(PROHIBIT_START) == (
        "qubes-core-dom0 4.2.39 has no qube feature prohibit-start (it starts at "
        "qubes-core-dom0 4.3.19)")


@pytest.mark.parametrize(("version", "holds"), [
    ((4, 3, 18), False), ((4, 3, 19), True), ((4, 3, 100), True), ((4, 4, 0), True),
    ((4, 2, 99), False), ((5,), True),
])
def test_the_package_version_decides(version, holds):
    assert Platform((4, 3), {"qubes-core-dom0": version}).has(PROHIBIT_START) is holds


def test_without_a_version_the_release_bounds_it():
    r42 = Platform((4, 2), unread=("rpm -q: No such file or directory",))
    assert r42.has(RUNTIME_POLICY_DIR) is False and r42.has(PROHIBIT_START) is False
    assert r42.lacks(RUNTIME_POLICY_DIR) == (
        "Qubes R4.2 has no runtime qrexec policy directory /run/qubes/policy.d (it starts at "
        "qubes-core-qrexec 4.3.0)")
    r43 = Platform((4, 3))
    assert r43.has(RUNTIME_POLICY_DIR) is True  # every 4.3 qrexec is 4.3.0 or later
    assert r43.has(PROHIBIT_START) is None  # 4.3.0 to 4.3.18 lack it
    assert Platform((4, 4)).has(SAVE_ON_SIGTERM) is True


def test_unknown_counts_as_missing_and_says_why():
    unread = ("/etc/qubes-release: No such file or directory",
              "rpm -q qubes-core-dom0: not installed", "rpm -q qubes-core-qrexec: not installed")
    nothing = Platform(unread=unread)
    assert nothing.has(RUNTIME_POLICY_DIR) is None
    assert nothing.lacks(RUNTIME_POLICY_DIR) == (
        "cannot tell whether this dom0 has runtime qrexec policy directory "
        "/run/qubes/policy.d (it starts at qubes-core-qrexec 4.3.0): /etc/qubes-release: "
        "No such file or directory; rpm -q qubes-core-qrexec: not installed")
    assert Platform((4, 3), unread=unread[1:]).lacks(PROHIBIT_START) == (
        "cannot tell whether Qubes R4.3 has qube feature prohibit-start (it starts at "
        "qubes-core-dom0 4.3.19): rpm -q qubes-core-dom0: not installed")


def test_report():
    assert R42.report() == {
        "release": "4.2", "unread": [],
        "packages": {"qubes-core-dom0": "4.2.39", "qubes-core-qrexec": "4.2.25"},
        "facts": {"runtime_policy_dir": False, "prohibit_start": False,
                  "save_on_sigterm": False, "file_snapshots_disabled": False}}
    assert Platform().report()["facts"] == dict.fromkeys(
        ("runtime_policy_dir", "prohibit_start", "save_on_sigterm", "file_snapshots_disabled"))

"""The rpm double answers `rpm -q` from each dom0 image's package list, as rpm 4 does."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
IMAGE = ROOT / "tests" / "kitchen" / "image"
RELEASES = ("4.2", "4.3")


def load_double():
    loader = importlib.machinery.SourceFileLoader("rpm_double", str(ROOT / "tests/doubles/rpm/rpm"))
    spec = importlib.util.spec_from_loader("rpm_double", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


rpm = load_double()


def packages(release: str) -> Path:
    return IMAGE / f"dom0-r{release}" / "var" / "lib" / "rpm-double" / "packages"


def query(capsys, release: str, *args: str) -> tuple[int, str, str]:
    status = rpm.main(list(args), packages(release))
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize("release", RELEASES)
def test_each_image_reports_qubes_packages_of_its_release(capsys, release):
    status, out, _ = query(capsys, release, "-q", "--qf", "%{VERSION}\\n",
                           "qubes-core-dom0", "qubes-core-qrexec")
    assert status == 0
    assert [line.rsplit(".", 1)[0] for line in out.splitlines()] == [release, release]
    release_file = (IMAGE / f"dom0-r{release}" / "etc" / "qubes-release").read_text()
    assert re.fullmatch(rf"Qubes release {re.escape(release)}\.\d+ \(R{re.escape(release)}\)\n",
                        release_file)


def test_default_format_is_name_version_release_arch(capsys):
    assert query(capsys, "4.2", "-q", "qubes-core-qrexec") == (
        0, "qubes-core-qrexec-4.2.25-1.fc37.x86_64\n", "")


def test_tags_in_any_case_and_no_newline_unless_asked(capsys):
    assert query(capsys, "4.3", "-q", "--queryformat", "%{version}-%{Release}",
                 "qubes-core-dom0") == (0, "4.3.50-1.fc41", "")


def test_a_package_not_installed_is_said_on_stdout_and_counted(capsys):
    status, out, _ = query(capsys, "4.3", "-q", "--qf", "%{VERSION}\\n",
                           "qubes-core-dom0", "shufflecake", "salt")
    assert status == 2
    assert out == ("4.3.50\npackage shufflecake is not installed\n"
                   "package salt is not installed\n")


def test_an_unknown_tag_is_an_error(capsys):
    status, out, err = query(capsys, "4.3", "-q", "--qf", "%{SUMMARY}", "qubes-core-dom0")
    assert (status, out) == (1, "")
    assert 'unknown tag: "SUMMARY"' in err


@pytest.mark.parametrize("args", [["-qa"], ["-V", "qubes-core-dom0"], ["-q"], ["-q", "--qf"], []])
def test_anything_else_is_refused(capsys, args):
    status, out, err = query(capsys, "4.3", *args)
    assert (status, out) == (1, "")
    assert err

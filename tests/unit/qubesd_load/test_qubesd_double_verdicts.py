"""The qubesd double starts on exactly the stores the real loader loads
(tests/fixtures/qubesd-load/verdicts.json)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qubesd import qubesd_double
from qubesd.qubesd_double import Refused, Store

CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "qubesd-load"
VERDICTS = json.loads((CORPUS / "verdicts.json").read_text())
DOUBLE = Path(qubesd_double.__file__)


def copy_case(case: str, tmp_path: Path) -> Path:
    path = tmp_path / "qubes.xml"
    shutil.copyfile(CORPUS / f"{case}.xml", path)
    return path


@pytest.mark.parametrize("case", sorted(VERDICTS))
def test_the_double_loads_what_the_real_loader_loads(case: str, tmp_path: Path) -> None:
    store = Store(str(copy_case(case, tmp_path)), str(tmp_path / "base"))
    if VERDICTS[case]["loads"]:
        store.load()
        assert store.root.find("domains") is not None
    else:
        with pytest.raises(Refused, match="qubesd does not load this store"):
            store.load()


def serve(store_path: Path, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "QUBES_XML_PATH": str(store_path),
           "QUBESD_DOUBLE_BASE_DIR": str(tmp_path / "base")}
    return subprocess.Popen([sys.executable, str(DOUBLE), "--socket", str(tmp_path / "sock"),
                             "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_the_service_refuses_to_start_on_a_store_the_real_loader_refuses(tmp_path: Path) -> None:
    assert not VERDICTS["appvm_template_removed"]["loads"]
    service = serve(copy_case("appvm_template_removed", tmp_path), tmp_path)
    _, err = service.communicate(timeout=60)
    assert service.returncode == 1
    assert ("refusing to start: qubesd does not load this store: qube 'work': "
            "property template: required, and it has no default") in err


def test_the_service_starts_on_a_store_the_real_loader_loads(tmp_path: Path) -> None:
    assert VERDICTS["netvm_loop"]["loads"]
    service = serve(copy_case("netvm_loop", tmp_path), tmp_path)
    try:
        for _ in range(200):
            if (tmp_path / "sock").exists() or service.poll() is not None:
                break
            time.sleep(0.05)
        assert (tmp_path / "sock").exists(), service.stderr.read() if service.poll() else ""
    finally:
        service.send_signal(signal.SIGTERM)
        out, err = service.communicate(timeout=60)
    assert service.returncode == 0, err
    assert "serving" in out

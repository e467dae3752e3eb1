"""The committed stubs match proto/ and generation is deterministic (what CI runs)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "gen_protos.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gen_protos", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_check_passes_on_clean_tree() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generation_is_deterministic() -> None:
    gen = load_script()
    assert gen.generate() == gen.generate()


def test_check_reports_drift(tmp_path: Path) -> None:
    gen = load_script()
    wanted = gen.generate()
    out = tmp_path / "mlp_protos"
    gen.write(out, wanted)
    assert gen.check(out, wanted) == 0
    target = out / "mlp" / "registry" / "v1" / "registry_pb2.py"
    target.write_text(target.read_text() + "# edited\n")
    (out / "mlp" / "stale_pb2.py").write_text("")
    assert gen.check(out, wanted) == 1

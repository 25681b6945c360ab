"""The edge runtime and `classify` work with torch and onnx blocked, and never import them."""

from __future__ import annotations

import json
import subprocess
import sys

BLOCK = "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; sys.modules['onnxscript'] = None\n"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=120)


def test_import_runtime_with_torch_blocked():
    result = run_python("import ser_edge, ser_edge.edge_runtime, ser_edge.cli; print('ok')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def run_cli_blocked(*args: str) -> subprocess.CompletedProcess:
    """``ser-edge ARGS`` with torch and onnx blocked; fails unless no torch, onnx or scipy got imported."""
    code = (
        "from ser_edge.cli import main\n"
        f"main({list(args)!r}, standalone_mode=False)\n"
        "assert not any(m.split('.')[0] in ('torch', 'onnx', 'scipy') and sys.modules[m] is not None for m in sys.modules)\n"
    )
    return run_python(code)


def test_classify_with_torch_blocked(tiny_model, wav):
    result = run_cli_blocked("classify", str(wav(300, 2.0)), "--model", str(tiny_model), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["label"] == "neutral"


def test_recipes_load_and_are_listed_with_torch_blocked():
    """`ser-edge train --help` names every recipe from train/recipes.py, the one list, without torch."""
    code = (
        "from ser_edge.train.recipes import RECIPES\n"
        "from ser_edge.cli import main\n"
        "main(['train', '--help'], standalone_mode=False)\n"
        "print('RECIPES', *RECIPES)\n"
        "assert not any(m.split('.')[0] == 'torch' and sys.modules[m] is not None for m in sys.modules)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    help_text, names = result.stdout.split("RECIPES ")
    names = names.split()
    assert "fast-cmn-speed-wide-ema-long" in names and len(names) == len(set(names)) > 20
    flat = "".join(help_text.split())  # click wraps long lines, also inside names
    assert flat.split("--recipe[", 1)[1].split("]", 1)[0].split("|") == names
    assert "[default:fast-cmn-speed-wide-ema-long-lr2]" in flat


def test_training_command_reports_missing_extra():
    code = "from ser_edge.cli import main\nmain(['train', '/nonexistent'])\n"
    result = run_python(code)
    assert result.returncode == 2
    assert "pip install 'ser-edge[train]'" in result.stderr and "Traceback" not in result.stderr


def test_manifest_evaluation_with_torch_blocked(tiny_model, wav, tmp_path):
    """`evaluate --manifest` is for app developers with the edge-only install."""
    wav(300, 2.0, name="low.wav")
    (tmp_path / "clips.csv").write_text("path,label\nlow.wav,neutral\n")
    result = run_cli_blocked("evaluate", "--manifest", str(tmp_path / "clips.csv"), "--model", str(tiny_model))
    assert result.returncode == 0, result.stderr
    assert "accuracy                         1.000         1" in result.stdout

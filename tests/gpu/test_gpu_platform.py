"""GPU-only checks (skipped on CPU machines by tests/conftest.py)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu


def test_cuda_platform_still_auto_detected_with_plugin_installed():
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    code = "import verl\nfrom verl.utils.device import get_device_name\nprint(get_device_name())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "cuda"

"""Supported vLLM range, and the plugin's refusal of anything else."""
from __future__ import annotations

import pytest

from vllm_dspark.adapter import compat


@pytest.mark.parametrize("version,ok", [
    ("0.25.9", False), ("0.26.0", True), ("0.32.0", True), ("0.32.0+cpu", True), ("0.33.7", True),
    ("0.34.0", False), ("0.34.0rc1", False), ("1.0.0", False),
])
def test_supported_range(version, ok):
    assert compat.is_supported(version) is ok


def test_unsupported_version_is_refused_with_both_versions_named():
    with pytest.raises(compat.UnsupportedVLLMVersion, match=r"vLLM >= 0.26 and < 0.34.*installed vLLM is 0.25.0"):
        compat.check_supported("0.25.0")


def test_installed_vllm_is_supported():
    pytest.importorskip("vllm")
    assert compat.is_supported(compat.vllm_version())


def test_plugin_refuses_an_unsupported_vllm(monkeypatch):
    pytest.importorskip("vllm")
    from packaging.version import Version

    from vllm_dspark.adapter import plugin

    monkeypatch.setattr(plugin, "_registered", False)
    monkeypatch.setattr(compat, "vllm_version", lambda: Version("0.35.0"))
    with pytest.raises(compat.UnsupportedVLLMVersion, match="installed vLLM is 0.35.0"):
        plugin.register()

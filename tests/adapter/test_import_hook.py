"""The post-import hook that worker-side patches use."""
from __future__ import annotations

import sys

from vllm_dspark.adapter.patches._import_hook import when_imported


def test_callback_runs_after_first_import_and_immediately_when_imported(tmp_path, monkeypatch):
    (tmp_path / "dspark_hook_probe.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    when_imported("dspark_hook_probe", lambda m: seen.append(m.VALUE))
    assert seen == []  # not imported yet
    import dspark_hook_probe  # noqa: F401

    assert seen == [41]
    when_imported("dspark_hook_probe", lambda m: seen.append(m.VALUE + 1))
    assert seen == [41, 42]
    del sys.modules["dspark_hook_probe"]

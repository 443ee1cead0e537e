"""`ttft-reconcile capture-callback` and the callback module's environment options."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from ttft_reconcile.capture import options_from_env
from ttft_reconcile.cli import cli


def test_writes_the_callback_file_beside_the_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model_list: []\n")
    result = CliRunner().invoke(cli, ["capture-callback", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0
    written = (tmp_path / "ttft_capture.py").read_text()
    assert "from ttft_reconcile.capture.callback import capture" in written
    assert len(written.strip().splitlines()) == 2
    assert 'callbacks: ["ttft_capture.capture"]' in result.output
    compile(written, "ttft_capture.py", "exec")

    again = CliRunner().invoke(cli, ["capture-callback", "--config", str(config)])
    assert again.exit_code == 0 and "unchanged" in again.output


def test_refuses_to_overwrite_other_content_without_force(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("")
    (tmp_path / "probe.py").write_text("# mine\n")
    refused = CliRunner().invoke(cli, ["capture-callback", "--config", str(config), "--name", "probe"])
    assert refused.exit_code == 1 and "--force" in refused.output
    assert (tmp_path / "probe.py").read_text() == "# mine\n"
    forced = CliRunner().invoke(cli, ["capture-callback", "--config", str(config), "--name", "probe", "--force"])
    assert forced.exit_code == 0 and "capture" in (tmp_path / "probe.py").read_text()


def test_usage_errors(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("")
    assert CliRunner().invoke(cli, ["capture-callback", "--config", str(config), "--name", "not-valid"]).exit_code == 2
    assert CliRunner().invoke(cli, ["capture-callback", "--config", str(tmp_path / "missing.yaml")]).exit_code == 2


def test_options_from_env() -> None:
    assert options_from_env({}) == {}
    assert options_from_env({"TTFT_CAPTURE_STAMP": "true", "TTFT_CAPTURE_MAX_OFFSETS": "16",
                             "TTFT_CAPTURE_QUEUE_SIZE": "100", "TTFT_CAPTURE_FLUSH_INTERVAL": "0.5"}) == {
        "stamp": True, "max_offsets": 16, "queue_size": 100, "flush_interval": 0.5}
    assert options_from_env({"TTFT_CAPTURE_STAMP": "no", "TTFT_CAPTURE_QUEUE_SIZE": "lots"}) == {"stamp": False}

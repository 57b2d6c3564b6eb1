"""Argument handling through Typer's CliRunner: exit codes as the shell sees them."""

from typer.testing import CliRunner

from gptcli.cli import app

runner = CliRunner()


def test_gptcli_error_keeps_its_exit_code_under_clirunner(tiny_model):
    result = runner.invoke(app, ["generate", "-m", str(tiny_model), "--top-p", "2", "hi"])
    assert result.exit_code == 2
    assert "top-p" in result.output


def test_unknown_option_is_a_usage_error():
    result = runner.invoke(app, ["generate", "--no-such-option"])
    assert result.exit_code == 2
    assert "no-such-option" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("gptcli ")


def test_runtime_error_is_exit_1(tmp_path):
    result = runner.invoke(app, ["generate", "-m", str(tmp_path / "missing.gguf"), "hi"])
    assert result.exit_code == 1
    assert "missing.gguf" in result.output

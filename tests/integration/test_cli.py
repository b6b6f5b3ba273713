"""The command lines of emitd and emitctl: --check-config, --version,
--help, and configuration errors that name file, line and key (SPEC 5)."""
import os
import subprocess

from conftest import EMITCTL, EMITD, SOURCE, SMALLEST

DATA = os.path.join(SOURCE, "tests", "data", "config")


def run(args, env=None, input=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("EMITD_")}
    e.update(env or {})
    return subprocess.run(args, capture_output=True, text=True, env=e,
                          input=input, timeout=20)


def test_check_config_accepts_the_example():
    r = run([EMITD, "--check-config", "--config",
             os.path.join(SOURCE, "agent.conf.example")])
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stderr
    assert "[spool]" in r.stdout and "max_bytes" in r.stdout


def test_check_config_names_file_line_and_key_of_an_unknown_key():
    path = os.path.join(DATA, "unknown-key.conf")
    r = run([EMITD, "--check-config", "--config", path])
    assert r.returncode != 0
    assert "unknown-key.conf:4:" in r.stderr
    assert "sycn" in r.stderr and "unknown key" in r.stderr


def test_check_config_names_a_bad_duration():
    r = run([EMITD, "--check-config", "--config",
             os.path.join(DATA, "bad-duration.conf")])
    assert r.returncode != 0
    assert "bad-duration.conf:5:" in r.stderr and "max_age" in r.stderr
    assert "ms, s, m, h or d" in r.stderr


def test_check_config_names_a_bad_size_unit_and_an_unknown_section():
    r = run([EMITD, "--check-config", "--config",
             os.path.join(DATA, "bad-size.conf")])
    assert r.returncode != 0 and "bad-size.conf:3:" in r.stderr
    assert "max_bytes" in r.stderr
    r = run([EMITD, "--check-config", "--config",
             os.path.join(DATA, "unknown-section.conf")])
    assert r.returncode != 0 and "unknown-section.conf:3:" in r.stderr
    assert "spol" in r.stderr


def test_check_config_reports_a_missing_file():
    r = run([EMITD, "--check-config", "--config", "/nonexistent/agent.conf"])
    assert r.returncode != 0
    assert "/nonexistent/agent.conf" in r.stderr
    assert "No such file" in r.stderr


def test_a_bad_config_stops_emitd_at_start():
    r = run([EMITD, "--config", os.path.join(DATA, "unknown-key.conf")])
    assert r.returncode != 0 and "unknown-key.conf:4:" in r.stderr


def test_environment_overrides_and_errors_name_the_variable():
    r = run([EMITD, "--check-config", "--config",
             os.path.join(DATA, "good.conf")],
            env={"EMITD_SPOOL_MAX_BYTES": "12XB"})
    assert r.returncode != 0
    assert "EMITD_SPOOL_MAX_BYTES" in r.stderr
    r = run([EMITD, "--check-config", "--config",
             os.path.join(DATA, "good.conf")],
            env={"EMITD_SPOOL_MAX_BYTES": "2GiB"})
    assert r.returncode == 0
    assert "max_bytes = 2GiB" in r.stdout or "2147483648" in r.stdout


def test_the_api_key_is_never_printed():
    r = run([EMITD, "--check-config", "--config",
             os.path.join(DATA, "good.conf")],
            env={"EMITD_UPSTREAM_API_KEY": "super-secret-value"})
    assert r.returncode == 0
    assert "super-secret-value" not in r.stdout + r.stderr


def test_version_and_help():
    r = run([EMITD, "--version"])
    assert r.returncode == 0 and r.stdout.startswith("emitd ")
    r = run([EMITD, "--help"])
    assert r.returncode == 0 and "--check-config" in r.stdout
    assert "EMITD_" in r.stdout
    r = run([EMITD, "--bogus"])
    assert r.returncode == 2
    r = run([EMITCTL, "--help"])
    assert r.returncode == 0 and "send" in r.stdout and "status" in r.stdout
    r = run([EMITCTL, "--version"])
    assert r.returncode == 0 and r.stdout.startswith("emitctl ")


def test_emitctl_send_prints_replies_and_exit_codes(make_emitd):
    d = make_emitd()
    r = run([EMITCTL, "-s", d.socket, "send", SMALLEST])
    assert r.returncode == 0 and '"ok":true' in r.stdout
    r = run([EMITCTL, "-s", d.socket, "send"], input=SMALLEST + "\n{\n")
    assert r.returncode == 1
    assert r.stdout.count("\n") == 2 and "bad_json" in r.stdout
    r = run([EMITCTL, "-s", "/nonexistent/emitd.sock", "send", SMALLEST])
    assert r.returncode == 2 and "/nonexistent/emitd.sock" in r.stderr

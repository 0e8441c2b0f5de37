"""cli/proxy_process.py: the CA and trust bundle, mitmdump's command line, the client environment."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from butter.cli import proxy_process as pp


def test_config_dir_is_mitmproxys_default_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(pp.CONFDIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert pp.config_dir() == tmp_path / ".mitmproxy"


def test_config_dir_env_override_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(pp.CONFDIR_ENV, str(tmp_path / "conf"))
    assert pp.config_dir() == tmp_path / "conf"


def test_ensure_trust_creates_ca_and_a_bundle_of_system_roots_plus_the_ca(tmp_path: Path):
    trust = pp.ensure_trust(tmp_path / "conf")
    ca = trust.ca_cert.read_text()
    bundle = trust.bundle.read_text()
    assert ca.startswith("-----BEGIN CERTIFICATE-----")
    assert bundle.endswith(ca)
    assert bundle.count("BEGIN CERTIFICATE") > ca.count("BEGIN CERTIFICATE")  # the system's roots are kept


def test_ensure_trust_keeps_an_existing_ca(tmp_path: Path):
    first = pp.ensure_trust(tmp_path).ca_cert.read_bytes()
    assert pp.ensure_trust(tmp_path).ca_cert.read_bytes() == first


def test_addon_script_is_the_butter_script_beside_the_addon_package():
    script = pp.addon_script()
    assert script.name == "butter.py" and script.parent.name == "addon" and script.is_file()


@pytest.mark.parametrize("spec,target", [("openai", "https://api.openai.com"), ("Gemini", "https://generativelanguage.googleapis.com"),
                                         ("https://llm.internal:8443/", "https://llm.internal:8443")])
def test_reverse_target_by_provider_name_or_url(spec, target):
    assert pp.reverse_target(spec)[1] == target


def test_reverse_target_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="openai"):
        pp.reverse_target("opnai")


def test_mitmdump_args_carry_every_option(tmp_path: Path):
    trust = pp.Trust(tmp_path, tmp_path / "ca.pem", tmp_path / "bundle.pem")
    opts = pp.ProxyOptions(db=tmp_path / "db", mode="replay", namespace="team", upstream_insecure=True,
                           options={"butter_min_observations": "2"})
    listener = pp.ReverseListener("openai", "https://api.openai.com", 9001)
    args = pp.mitmdump_args(opts, trust, 9000, [listener])
    line = " ".join(args)
    assert args[1:3] == ["-s", str(pp.addon_script())]
    for expected in ("--mode regular@9000", "--mode reverse:https://api.openai.com@9001", f"confdir={tmp_path}",
                     f"butter_db={tmp_path / 'db'}", "butter_mode=replay", "butter_namespace=team",
                     "ssl_insecure=true", "butter_min_observations=2", "--listen-host 127.0.0.1"):
        assert expected in line


def test_reverse_listener_tells_the_sdk_its_base_url():
    assert pp.ReverseListener("openai", "https://api.openai.com", 9001).client_var() == \
        ("OPENAI_BASE_URL", "https://localhost:9001/v1")
    assert pp.ReverseListener("ollama", "http://127.0.0.1:11434", 9002).client_var() == \
        ("OLLAMA_HOST", "http://127.0.0.1:9002")
    assert pp.ReverseListener("https://x.test", "https://x.test", 9003).client_var() is None


def test_client_env_points_python_curl_requests_and_node_at_the_proxy(tmp_path: Path):
    trust = pp.Trust(tmp_path, tmp_path / "ca.pem", tmp_path / "bundle.pem")
    env = pp.client_env("http://127.0.0.1:9000", trust, {"NODE_OPTIONS": "--max-old-space-size=512"})
    assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://127.0.0.1:9000"
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == env["CURL_CA_BUNDLE"] == str(trust.bundle)
    assert env["NODE_EXTRA_CA_CERTS"] == str(trust.ca_cert)
    node_options = shlex.split(env["NODE_OPTIONS"])
    assert node_options[0] == "--max-old-space-size=512"  # the caller's own options are kept
    assert node_options[1:] == ["--import", pp.PRELOAD.as_uri()]
    assert pp.PRELOAD.is_file()

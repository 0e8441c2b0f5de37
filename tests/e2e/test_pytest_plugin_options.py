"""butter's pytest plugin in small generated projects (pytester, one pytest subprocess each):
modes, where cassettes go, what the environment holds, and a replay miss without a cassette."""
from __future__ import annotations

import pytest

from tests.e2e.harness import ROOT

pytest_plugins = ["pytester"]


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    # Only this plugin, as with butter installed (its entry point), whatever else this venv holds.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))

    def go(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess("-p", "butter.cli.pytest_plugin", "-p", "no:cacheprovider", "-rA", *args,
                                             timeout=180)
    return go


def test_off_mode_starts_no_proxy_and_leaves_the_environment_alone(pytester, run):
    pytester.makepyfile(test_off="""
        import os, pytest

        @pytest.mark.butter
        def test_marked(butter):
            assert (butter.mode, butter.env, butter.proxy_url, butter.cassette) == ("off", {}, None, None)
            assert "HTTPS_PROXY" not in os.environ
    """)
    result = run("--butter-mode=off")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "cassettes").exists()


def test_cassettes_are_per_test_per_shared_namespace_or_per_module_and_env_is_set_only_during_the_test(pytester, run):
    pytester.makepyfile(test_paths="""
        import os, pathlib, pytest

        HERE = pathlib.Path(__file__).parent

        def where(butter):
            return butter.cassette.relative_to(HERE).as_posix(), butter.namespace

        def test_plain(butter):
            assert where(butter) == ("cassettes/test_paths/test_plain.jsonl", "test_paths/test_plain")
            assert os.environ["HTTPS_PROXY"] == butter.proxy_url == butter.env["HTTPS_PROXY"]
            assert pathlib.Path(os.environ["SSL_CERT_FILE"]).is_file()
            assert pathlib.Path(os.environ["NODE_EXTRA_CA_CERTS"]).is_file()
            assert "--import" in os.environ["NODE_OPTIONS"]

        def test_not_using_butter():
            assert "HTTPS_PROXY" not in os.environ

        class TestGroup:
            @pytest.mark.parametrize("n", ["a b", "1"])
            def test_param(self, butter, n):
                expected = {"a b": "TestGroup.test_param_a_b", "1": "TestGroup.test_param_1"}[n]
                assert where(butter)[0] == f"cassettes/test_paths/{expected}.jsonl"

        @pytest.mark.butter(namespace="refunds")
        def test_named(butter):
            assert where(butter) == ("cassettes/refunds.jsonl", "refunds")
            assert butter.counts() == {} and (butter.hits, butter.misses) == (0, 0)

        @pytest.mark.butter(shared=True)
        def test_shared_with_the_module(butter):
            assert where(butter) == ("cassettes/test_paths.jsonl", "test_paths")
    """)
    result = run("--butter-mode=replay")
    result.assert_outcomes(passed=6)
    pytester.makepyfile(test_scope="""
        def test_module_scope(butter):
            assert butter.cassette.as_posix().endswith("/recs/test_scope.jsonl"), butter.cassette
    """)
    run("--butter-scope=module", "--butter-cassettes=recs", "test_scope.py").assert_outcomes(passed=1)


def test_a_request_with_no_cassette_in_replay_mode_fails_naming_the_cassette_to_record(pytester, run):
    pytester.makepyfile(test_new="""
        import openai, pytest

        def ask():
            client = openai.OpenAI(api_key="sk-test-none", max_retries=0)
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

        @pytest.mark.butter
        def test_asks_the_model():
            ask()

        @pytest.mark.butter
        def test_swallows_the_error():
            try:
                ask()
            except openai.APIError:
                pass  # an agent that carries on without an answer still fails in replay mode
    """)
    result = run()  # replay is the default mode
    result.assert_outcomes(failed=2)
    text = result.stdout.str()
    assert "1 LLM request(s) of this test were never recorded in" in text
    assert "cassettes/test_new/test_asks_the_model.jsonl (no such cassette yet)" in text
    assert "request 1: POST api.openai.com/v1/chat/completions" in text
    assert "--butter-mode=auto" in text
    assert "sk-test-none" not in text
    assert "cassettes/test_new/test_swallows_the_error.jsonl (no such cassette yet)" in text


def test_an_unknown_mode_in_the_ini_file_is_a_usage_error(pytester, run):
    pytester.makeini("[pytest]\nbutter_mode = sometimes\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "butter_mode = 'sometimes'" in result.stderr.str()


def test_a_proxy_that_cannot_start_fails_the_first_test_with_its_log_and_the_rest_at_once(pytester, run):
    pytester.makepyfile(test_broken="""
        def test_one(butter):
            pass

        def test_two(butter):
            pass
    """)
    result = run("--butter-mode=auto", "--butter-proxy-option=butter_min_observations=0")
    result.assert_outcomes(errors=2)
    text = result.stdout.str()
    assert "butter: the proxy did not start: mitmdump exited" in text
    assert "butter_min_observations must be at least 1" in text  # mitmdump's own words, from its log
    assert "the proxy could not start earlier in this session" in text

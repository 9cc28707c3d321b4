"""The suite's key-leak guard itself must be able to fail."""

from __future__ import annotations

from pathlib import Path


def test_guard_fails_a_test_that_prints_the_key(pytester, capfd):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(helpers=(Path(__file__).parent / "helpers.py").read_text())
    pytester.makepyfile(
        """
        import logging
        from helpers import API_KEY

        def test_prints():
            print("header: KakaoAK " + API_KEY)

        def test_logs():
            logging.getLogger("x").warning("key=%s", API_KEY)

        def test_clean():
            print("nothing secret")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    leaked = sum("API key leaked into captured output" in line for line in result.outlines)
    capfd.readouterr()  # the inner run's output shows the canary; keep it out of this test's report
    assert (outcomes.get("passed"), outcomes.get("failed"), outcomes.get("errors")) == (1, 2, None)
    assert leaked >= 2

"""Callback tokens (airflow_provider_kakaopose.callbacks): signing, tampering, expiry, rotation, settings."""

from __future__ import annotations

import logging
import time

import pytest

from airflow_provider_kakaopose import callbacks
from airflow_provider_kakaopose.callbacks import InvalidToken, make_token, parse_keys, verify_token

SECRET_A = "a" * 16 + "-first-secret"
SECRET_B = "b" * 16 + "-second-secret"
KEYS = parse_keys(f"k1:{SECRET_A}")


def test_a_token_verifies_and_names_its_key_expiry_and_nonce():
    token, nonce = make_token(KEYS, time.time() + 60)
    claims = verify_token(token, KEYS)
    assert claims.kid == "k1" and claims.nonce == nonce and claims.expires > time.time()
    assert SECRET_A not in token
    assert make_token(KEYS, time.time() + 60)[1] != nonce  # a random nonce per token


@pytest.mark.parametrize("part", [1, 2, 3, 4])
def test_a_tampered_token_is_refused(part):
    token, _ = make_token(KEYS, time.time() + 60)
    pieces = token.split(".")
    pieces[part] = pieces[part][:-1] + ("x" if pieces[part][-1] != "x" else "y")
    if part == 2:
        pieces[2] = str(int(token.split(".")[2]) + 3600)  # a later expiry
    with pytest.raises(InvalidToken):
        verify_token(".".join(pieces), KEYS)


def test_an_expired_token_is_refused():
    token, _ = make_token(KEYS, time.time() - 1)
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(token, KEYS)
    assert verify_token(token, KEYS, now=time.time() - 10).kid == "k1"


def test_rotation_first_signs_all_verify_dropped_key_refused():
    old_token, _ = make_token(parse_keys(f"k1:{SECRET_A}"), time.time() + 60)
    rotated = parse_keys(f"k2:{SECRET_B}, k1:{SECRET_A}")
    new_token, _ = make_token(rotated, time.time() + 60)
    assert new_token.split(".")[1] == "k2"
    assert verify_token(old_token, rotated).kid == "k1"
    assert verify_token(new_token, rotated).kid == "k2"
    with pytest.raises(InvalidToken, match="unknown key"):
        verify_token(old_token, parse_keys(f"k2:{SECRET_B}"))
    # the same key id with another secret: the signature does not hold
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(new_token, parse_keys(f"k2:{SECRET_A}"))


@pytest.mark.parametrize(
    "token", ["", "v1", "v2.k1.1.nonce-nonce-nonce.sig", "v1.k1.x.nonce-nonce-nonce.sig", "a" * 400]
)
def test_malformed_tokens_are_refused(token):
    with pytest.raises(InvalidToken):
        verify_token(token, KEYS)


@pytest.mark.parametrize("text", ["", "nokid", "k1:short", f"k1:{SECRET_A},k1:{SECRET_B}", f"bad kid!:{SECRET_A}"])
def test_unusable_secrets_are_refused_without_showing_them(text):
    with pytest.raises(ValueError) as info:
        parse_keys(text)
    assert SECRET_A not in str(info.value) and SECRET_B not in str(info.value)


def test_the_url_is_under_the_mount_path_and_quotes_the_token():
    settings = callbacks.CallbackSettings("https://af.example.com/", KEYS)
    token, _ = make_token(KEYS, time.time() + 60)
    url = settings.url(token)
    assert url == f"https://af.example.com/kakao-pose-callbacks/job-ended?token={token}"
    assert SECRET_A not in repr(settings)
    assert settings.url_problem() is None
    assert "not HTTPS" in callbacks.CallbackSettings("http://af.example.com:8080", KEYS).url_problem()


def test_settings_come_from_airflow_config(monkeypatch):
    monkeypatch.setenv("AIRFLOW__KAKAO_POSE__CALLBACK_BASE_URL", "https://af.example.com")
    monkeypatch.setenv("AIRFLOW__KAKAO_POSE__CALLBACK_SECRET", f"k2:{SECRET_B},k1:{SECRET_A}")
    monkeypatch.setenv("AIRFLOW__KAKAO_POSE__CALLBACK_POLL_INTERVAL", "42")
    settings = callbacks.configured_callbacks()
    assert settings is not None
    assert [kid for kid, _ in settings.keys] == ["k2", "k1"] and settings.poll_interval == 42.0
    monkeypatch.delenv("AIRFLOW__KAKAO_POSE__CALLBACK_SECRET")
    assert callbacks.configured_callbacks() is None


def test_unusable_settings_mean_polling_with_a_warning_that_hides_the_secret(monkeypatch, caplog):
    monkeypatch.setattr(callbacks, "_WARNED", set())
    monkeypatch.setenv("AIRFLOW__KAKAO_POSE__CALLBACK_BASE_URL", "https://af.example.com")
    monkeypatch.setenv("AIRFLOW__KAKAO_POSE__CALLBACK_SECRET", "k1:tooshort")
    with caplog.at_level(logging.WARNING):
        assert callbacks.configured_callbacks() is None
    assert "unusable" in caplog.text and "tooshort" not in caplog.text


def test_provider_info_declares_the_callback_options():
    from airflow_provider_kakaopose.get_provider_info import get_provider_info

    options = get_provider_info()["config"]["kakao_pose"]["options"]
    assert options["callback_secret"]["sensitive"] is True
    assert options["callback_poll_interval"]["default"] == "300"
    assert options["callback_base_url"]["default"] == ""


def test_the_plugin_is_registered_as_official_providers_do():
    import tomllib

    from helpers import ROOT

    from airflow_provider_kakaopose.get_provider_info import get_provider_info

    [plugin] = get_provider_info()["plugins"]
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["airflow.plugins"]
    assert entry == {plugin["name"]: plugin["plugin-class"].rsplit(".", 1)[0] + ":KakaoPoseCallbackPlugin"}
    from airflow_provider_kakaopose.plugins.plugin import KakaoPoseCallbackPlugin

    [app] = KakaoPoseCallbackPlugin.fastapi_apps
    assert app["url_prefix"] == callbacks.MOUNT_PATH and app["app"].openapi_url is None


def test_on_airflow_2_the_plugin_mounts_nothing(monkeypatch):
    from airflow_provider_kakaopose.plugins import plugin

    monkeypatch.setattr(plugin, "AIRFLOW_V_3_0_PLUS", False)
    assert plugin._fastapi_apps() == []

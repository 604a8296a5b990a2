import hashlib
import hmac
import re

import pytest
from cryptography.fernet import Fernet

from gateway.config import ConfigError, parse_fernet_keys
from gateway.secrets_box import (
    InvalidToken,
    SecretBox,
    constant_time_in,
    display_parts,
    generate_user_key,
    hash_user_key,
    mask,
)


def test_user_key_is_the_tier_prefix_and_at_least_32_url_safe_random_characters():
    keys = {generate_user_key("sk-dev-") for _ in range(50)}

    assert len(keys) == 50
    for key in keys:
        assert re.fullmatch(r"sk-dev-[A-Za-z0-9_-]{32,}", key)


def test_user_key_hash_is_hmac_sha256_under_the_pepper():
    key = "sk-dev-" + "a" * 40

    assert hash_user_key(key, "pepper-1") == hmac.new(b"pepper-1", key.encode(), hashlib.sha256).hexdigest()
    assert hash_user_key(key, "pepper-1") != hash_user_key(key, "pepper-2")
    assert len(hash_user_key(key, "pepper-1")) == 64


def test_display_parts_show_the_tier_prefix_four_random_characters_and_the_last_four():
    key = "sk-pro-ABCDefghijklmnopqrstuvwxyz0123456789WXYZ"

    assert display_parts(key, "sk-pro-") == ("sk-pro-ABCD", "WXYZ")
    assert mask(*display_parts(key, "sk-pro-")) == "sk-pro-ABCD****WXYZ"


def test_display_parts_of_a_short_legacy_key_reveal_little_of_it():
    key = "legacy0123456789abcd"  # 20 characters, no tier prefix

    prefix, last4 = display_parts(key, "sk-dev-")

    assert (prefix, last4) == ("legac", "abcd")


def test_constant_time_in_matches_only_an_exact_entry():
    tokens = ["first-token-aaaaaaaa", "second-token-bbbbbbb"]

    assert constant_time_in("second-token-bbbbbbb", tokens)
    assert not constant_time_in("second-token-bbbbbb", tokens)
    assert not constant_time_in("", tokens)
    assert not constant_time_in("first-token-aaaaaaaa", [])


def test_secret_box_round_trip_hides_the_secret():
    box = SecretBox([Fernet.generate_key().decode()])

    token = box.encrypt("sk-upstream-secret-1234")

    assert "sk-upstream-secret-1234" not in token
    assert box.decrypt(token) == "sk-upstream-secret-1234"


def test_rotation_re_encrypts_under_the_newest_key_so_the_old_key_can_go():
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = SecretBox([old]).encrypt("s3cret-value-xyz")

    both = SecretBox([new, old])
    assert both.decrypt(token) == "s3cret-value-xyz"
    rotated = both.rotate(token)

    assert SecretBox([new]).decrypt(rotated) == "s3cret-value-xyz"
    with pytest.raises(InvalidToken):
        SecretBox([new]).decrypt(token)
    with pytest.raises(InvalidToken):
        SecretBox([old]).decrypt(rotated)


def test_fernet_key_list_accepts_several_keys_newest_first():
    first, second = Fernet.generate_key().decode(), Fernet.generate_key().decode()

    assert parse_fernet_keys(f" {first} , {second} ") == [first, second]


@pytest.mark.parametrize("raw", ["", "not-a-key", "a" * 44, Fernet.generate_key().decode()[:-4], "é" * 44])
def test_malformed_fernet_keys_are_a_config_error(raw):
    with pytest.raises(ConfigError):
        parse_fernet_keys(raw)

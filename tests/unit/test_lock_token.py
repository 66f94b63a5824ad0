"""A lock's token says which process took it (tasks.lock), for the operator's jobs show."""

from __future__ import annotations

import os
import socket

import pytest

from tasks.lock import new_token, token_process


def test_a_new_token_names_this_process_and_is_unique() -> None:
    token = new_token()
    assert token_process(token) == (socket.gethostname(), os.getpid())
    assert token_process(token.encode()) == (socket.gethostname(), os.getpid())
    assert new_token() != token


@pytest.mark.parametrize("token", [None, b"someone", "a:b:c", "host:12:short",
                                   ":12:" + "0" * 32, "host:x1:" + "0" * 32])
def test_a_token_of_another_form_names_no_process(token: bytes | str | None) -> None:
    assert token_process(token) is None


def test_a_host_name_with_colons_is_kept_whole() -> None:
    assert token_process("fe80::1:42:" + "a" * 32) == ("fe80::1", 42)

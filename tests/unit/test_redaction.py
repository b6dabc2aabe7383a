"""Secrets are replaced wherever they appear: known values, and well-known key formats."""

from sandcastle.redaction import REDACTED, Redactor


def test_known_values_and_key_formats_are_replaced_in_text_bytes_and_data() -> None:
    redactor = Redactor(["hunter2-correct-horse", "short"])
    text = "key=hunter2-correct-horse openai=sk-proj-abcdefghijklmnopqrstuvwxyz e2b=e2b_0123456789abcdef0123 short"

    assert redactor.text(text) == f"key={REDACTED} openai={REDACTED} e2b={REDACTED} short"
    assert redactor.bytes(b"\xff hunter2-correct-horse \xfe") == b"\xff " + REDACTED.encode() + b" \xfe"
    assert redactor.data({"a": ["AKIAABCDEFGHIJKLMNOP", 3, None]}) == {"a": [REDACTED, 3, None]}


def test_a_secret_added_later_is_replaced_whole_even_when_it_contains_another() -> None:
    redactor = Redactor(["abcdefgh"])
    redactor.add("abcdefgh-and-more")
    assert redactor.text("x abcdefgh-and-more y abcdefgh") == f"x {REDACTED} y {REDACTED}"


def test_private_keys_are_replaced_whole() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----"
    assert Redactor().text(f"before\n{pem}\nafter") == f"before\n{REDACTED}\nafter"

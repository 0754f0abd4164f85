"""The SOP grammar: every kind of line, tolerated decorations, ignored lines, caching."""

from __future__ import annotations

import pytest

from selfimprove_rl.simulated.sop import parse_line, parse_sop, parse_terms

COFFEE = "I see you are a person of taste! I like coffee, too."


@pytest.mark.parametrize(
    "line",
    [
        'if input mentions coffee or espresso: respond "Yes."',
        'If input mentions coffee or espresso: respond "Yes."',
        'IF INPUT MENTIONS coffee OR espresso: RESPOND "Yes."',
        '- if input mentions coffee, espresso: respond "Yes."',
        '* if the input mentions coffee or espresso, then respond with "Yes."',
        '1. if input mentions coffee or espresso: respond "Yes."; terminate',
        '12) if the message mentions coffee or espresso then reply "Yes."',
        "• if input mentions coffee or espresso: respond “Yes.”",
        '(3) if input mentions either coffee or espresso: say "Yes." and terminate.',
    ],
)
def test_mentions_rules_tolerate_bullets_casing_and_suffixes(line: str) -> None:
    statement = parse_line(line, 7)
    assert statement is not None
    assert statement.kind == "mentions"
    assert statement.terms == ("coffee", "espresso")
    assert statement.reply == "Yes."
    assert statement.line == 7


def test_terms_phrases_and_whole_word_matching() -> None:
    statement = parse_line(
        'if input mentions "flat white", latte, or cold brew: respond "Coffee!"', 1
    )
    assert statement is not None
    assert statement.terms == ("flat white", "latte", "cold brew")
    assert statement.matches("One FLAT   WHITE please")
    assert statement.matches("cold brew.")
    assert statement.matches("Latte?")
    assert not statement.matches("lattes are nice")  # whole words only
    assert not statement.matches("white flat")
    assert parse_terms("coffee or espresso or tea") == ("coffee", "espresso", "tea")


def test_reply_may_hold_quotes_and_apostrophes() -> None:
    statement = parse_line(
        """if input mentions sport: respond "Well, I don't like "sports"." """, 1
    )
    assert statement is not None
    assert statement.reply == 'Well, I don\'t like "sports".'


def test_about_rules_keep_the_description_and_its_facets() -> None:
    statement = parse_line('else if input is about a refund or a billing error: reply "Sorry."', 2)
    assert statement is not None
    assert statement.kind == "about"
    assert statement.description == "a refund or a billing error"
    assert statement.facets == ("a refund or a billing error", "a refund", "a billing error")
    with pytest.raises(ValueError, match="Expected a 'mentions' rule"):
        statement.matches("refund")


def test_examples_and_else_lines() -> None:
    example = parse_line(f'example: "I love my espresso machine" -> "{COFFEE}"', 3)
    assert example is not None and example.kind == "example"
    assert example.example_input == "I love my espresso machine"
    assert example.reply == COFFEE
    arrow = parse_line('Example 2: "I run daily" → "No sports."', 4)
    assert arrow is not None and arrow.example_input == "I run daily"
    fallback = parse_line('Otherwise: respond "Tell me more."', 5)
    assert fallback is not None and fallback.kind == "else"
    assert fallback.reply == "Tell me more."


@pytest.mark.parametrize(
    "line",
    [
        "## SOP",
        "Be friendly and concise.",
        "Always answer politely about coffee.",
        'if input mentions coffee: respond ""',
        "if input mentions coffee: be brief",
        'if input mentions : respond "x"',
        'if input mentions coffee: respond "x" and then ask a question',
        'example: "only an input"',
        "else: be nice",
    ],
)
def test_lines_it_cannot_parse_are_ignored(line: str) -> None:
    assert parse_line(line, 1) is None


@pytest.mark.parametrize(
    ("line", "kind", "condition", "reply"),
    [
        (
            "If the message is about logging in, passwords, or account access, reply with "
            'exactly: Sorry you\'re locked out. Try "Forgot password".',
            "about",
            "logging in, passwords, or account access",
            'Sorry you\'re locked out. Try "Forgot password".',
        ),
        (
            "When the customer asks for a refund, respond with exactly this text: Refund sent.",
            "about",
            "a refund",
            "Refund sent.",
        ),
        (
            '- If the user\'s message contains the words espresso or latte, reply: "Coffee!"',
            "mentions",
            ("espresso", "latte"),
            "Coffee!",
        ),
        ("if input mentions coffee: respond Yes", "mentions", ("coffee",), "Yes"),
        ("Otherwise, reply with exactly: Tell me more.", "else", None, "Tell me more."),
        ('If none of these apply, reply "Thanks!"', "else", None, "Thanks!"),
        ('- "We will call you back."', "option", None, "We will call you back."),
        (
            "- If a customer cannot sign in or is locked out, reply: Try a password reset.",
            "about",
            "cannot sign in or is locked out",
            "Try a password reset.",
        ),
        ("When someone asks about coffee, say: Coffee!", "about", "coffee", "Coffee!"),
        ("For anything else (feedback, ideas), reply: Thanks!", "else", None, "Thanks!"),
    ],
)
def test_plain_language_instructions_are_understood(
    line: str, kind: str, condition: object, reply: str
) -> None:
    statement = parse_line(line, 1)
    assert statement is not None
    assert (statement.kind, statement.reply) == (kind, reply)
    if kind == "about":
        assert statement.description == condition
    if kind == "mentions":
        assert statement.terms == condition


def test_a_reply_list_after_a_one_of_these_line_gives_options() -> None:
    sop = parse_sop(
        "Reply with exactly one of these replies, word for word, and nothing else:\n"
        "- Your refund is on its way.\n"
        "2. We shipped it yesterday.\n"
        "\n"
        "- Be friendly."
    )
    assert [s.reply for s in sop.options] == [
        "Your refund is on its way.",
        "We shipped it yesterday.",
    ]
    assert sop.ignored == (1, 5)


def test_parse_keeps_order_lists_ignored_lines_and_caches() -> None:
    prompt = "\n".join(
        [
            "You are a helpful assistant.",
            "",
            'example: "I like tea" -> "Tea."',
            'if input mentions coffee: respond "Coffee."',
            'else: respond "Else."',
            'else if input is about sports: respond "Sports."',
            "Be nice.",
        ]
    )
    sop = parse_sop(prompt)
    assert [s.kind for s in sop.statements] == ["example", "mentions", "else", "about"]
    assert [s.line for s in sop.statements] == [3, 4, 5, 6]
    assert sop.ignored == (1, 7)
    assert [r.kind for r in sop.rules] == ["mentions", "about"]
    assert sop.fallback is not None and sop.fallback.reply == "Else."
    assert [s.kind for s in sop.first(2).statements] == ["example", "mentions"]
    assert sop.first(None) is sop
    hits = parse_sop.cache_info().hits
    assert parse_sop(prompt) is sop
    assert parse_sop.cache_info().hits == hits + 1

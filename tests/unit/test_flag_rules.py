"""Argument rules and timed stops without a server: parsing, canonical text, matching."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from asyncjobs import FlagRuleError
from asyncjobs._jobs import build_spec
from asyncjobs._rules import (
    Matcher,
    Rule,
    check_arguments,
    conditions,
    end_of,
    parse_condition,
    parse_for,
    parse_until,
    rule_text,
    takes,
)


async def invoice_job(
    ctx: Any, invoice_id: int, customer_id: int = 7, *, region: str = "eu"
) -> None: ...


SPEC = build_spec(invoice_job)


def _rule(rule_id: int, *texts: str) -> Rule:
    conds = conditions(texts)
    return Rule(
        rule_id, "invoice_job", conds, rule_text(conds), datetime.now(UTC), "me", None, None
    )


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("customer_id=42", "customer_id=42"),
        ("customer_id == 42", "customer_id=42"),
        ("customer_id in (43,42, 'x')", "customer_id in (42, 43, 'x')"),
        ("amount>=1.5", "amount>=1.5"),
        ("region=eu", "region='eu'"),
        ("region != 'two words'", "region!='two words'"),
        ("n<1e3", "n<1000"),
    ],
)
def test_conditions_parse_to_one_canonical_text(text: str, canonical: str) -> None:
    assert parse_condition(text).text == canonical


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("customer_id =< 4", "'< 4' is not a value"),
        ("customer_id<abc", "< compares numbers, and 'abc' is not a number"),
        ("customer_id in ()", "the list after 'in'"),
        ("customer_id in (1,,2)", "the list after 'in'"),
        ("9x=1", "is not an argument rule"),
        ("customer_id=", "the value is missing"),
    ],
)
def test_a_malformed_condition_is_one_error_naming_it(text: str, said: str) -> None:
    with pytest.raises(FlagRuleError, match=said) as caught:
        parse_condition(text)
    assert repr(text) in str(caught.value)


def test_a_rules_conditions_are_sorted_so_the_same_rule_has_the_same_text() -> None:
    one = rule_text(conditions(["region=us", "customer_id in (2, 1)"]))
    two = rule_text(conditions(["customer_id in (1,2)"], {"region": "us"}))
    assert one == two == "customer_id in (1, 2) and region='us'"
    assert rule_text(conditions((), {"customer_id": [3, 4]})) == "customer_id in (3, 4)"
    with pytest.raises(FlagRuleError, match="at least one condition"):
        conditions(())
    with pytest.raises(FlagRuleError, match="a number or a string"):
        conditions((), {"customer_id": True})


def test_an_argument_the_job_does_not_have_is_named_with_the_ones_it_has() -> None:
    check_arguments(SPEC, conditions(["customer_id=1", "region=eu"]))
    with pytest.raises(FlagRuleError, match=r"no argument 'customr_id' \(its arguments: "):
        check_arguments(SPEC, conditions(["customr_id=1"]))
    assert takes(SPEC, ["customer_id"])
    assert not takes(SPEC, ["tenant"])


def test_matching_binds_by_position_keyword_and_default() -> None:
    rules = [_rule(1, "customer_id=42"), _rule(2, "customer_id in (5, 6)")]
    rules.append(_rule(3, "invoice_id>100", "region=us"))
    rules.append(_rule(4, "invoice_id<0"))
    m = Matcher(SPEC, rules)
    assert m.match((1, 42), {}) is rules[0]
    assert m.match((1,), {"customer_id": 42.0}) is rules[0]
    assert m.match((1,), {"customer_id": "42"}) is rules[0]  # the text of the number
    assert m.match((1, 5), {}) is rules[1]
    assert m.match((1,), {}) is None  # the default, 7
    assert m.match((101,), {"region": "us"}) is rules[2]
    assert m.match((101,), {}) is None  # region defaults to eu
    assert m.match((99,), {"region": "us"}) is None
    assert m.match((-1,), {}) is rules[3]
    assert m.match(("-1",), {}) is None  # ranges match numbers only
    assert m.match((1, True), {}) is None  # True is no number here
    assert m.match((1, [42]), {}) is None  # unhashable: equal to nothing
    assert Matcher(SPEC, [_rule(5, "customer_id=7")]).match((1,), {}) is not None


def test_timed_stops_end_after_now_and_not_at_zero() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_for("30m") == timedelta(minutes=30)
    assert end_of(timedelta(minutes=30), now) == now + timedelta(minutes=30)
    assert parse_until("2026-12-01T10:00Z") == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert parse_until("2026-12-01T10:00") == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert end_of(None) is None
    for bad, said in [("0s", "longer than zero"), ("30", "is not a duration")]:
        with pytest.raises(FlagRuleError, match=said):
            parse_for(bad)
    with pytest.raises(FlagRuleError, match="is not a date and time"):
        parse_until("tomorrow")
    with pytest.raises(FlagRuleError, match="is not in the future"):
        end_of(datetime(2025, 1, 1, tzinfo=UTC), now)
    with pytest.raises(FlagRuleError, match="give a time zone"):
        end_of(datetime(2027, 1, 1), now)

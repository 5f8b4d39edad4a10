"""The official OpenFeature Python SDK with its OFREP provider, evaluating Pylon's flags
(scripts/flags.json) through a flags-only key: every type, targeting, fractional splits that
match flagd's published vectors, a disabled flag and a missing one."""

import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import ErrorCode, Reason

base, key = sys.argv[1], sys.argv[2]
api.set_provider(OFREPProvider(base_url=base, headers_factory=lambda: {"Authorization": f"Bearer {key}"}))
client = api.get_client()
checks = 0


def check(got, want, what):
    global checks
    assert got == want, f"{what}: got {got!r}, want {want!r}"
    checks += 1


def ctx(key="u1", **attrs):
    return EvaluationContext(targeting_key=key, attributes=attrs)


d = client.get_boolean_details("new-checkout", False, ctx(email="ana@example.com"))
check((d.value, d.reason), (True, Reason.TARGETING_MATCH), "boolean targeting")
d = client.get_boolean_details("new-checkout", True, ctx(email="ana@other.org"))
check((d.value, d.reason, d.variant), (False, Reason.DEFAULT, "off"), "boolean default")
check(client.get_string_value("app-gate", "x", ctx(version="2.3.0")), "new", "sem_ver")
check(client.get_string_value("app-gate", "x", ctx(version="1.9")), "old", "sem_ver below")
check(client.get_integer_value("max-items", 0), 10, "integer")
check(client.get_float_value("ratio", 0.0), 0.25, "float")
check(client.get_object_value("theme", {}), {"bg": "#000", "fg": "#fff"}, "object")
# flagd's own vectors for this definition (integer fractional bucketing).
for name, suit in [("jack", "hearts"), ("queen", "spades"), ("ten", "clubs"), ("nine", "diamonds")]:
    d = client.get_string_details("fractional-flag", "fallback", ctx(user={"name": name}))
    check(d.value, suit, f"fractional for {name}")
first = client.get_string_value("coin", "x", ctx("sticky"))
for _ in range(20):
    check(client.get_string_value("coin", "x", ctx("sticky")), first, "sticky split")
d = client.get_boolean_details("retired", False)
check((d.value, d.reason), (True, Reason.DISABLED), "disabled: its default variant")
d = client.get_string_details("no-such-flag", "fallback")
check((d.value, d.error_code), ("fallback", ErrorCode.FLAG_NOT_FOUND), "missing flag")
d = client.get_integer_details("theme", 7)
check((d.value, d.error_code), (7, ErrorCode.TYPE_MISMATCH), "type mismatch")
print(f"OpenFeature Python SDK over OFREP: {checks} checks passed")

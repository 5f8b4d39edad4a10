"""Validates Pylon's /openapi.json as OpenAPI 3.1, and checks that /docs needs nothing but Pylon:
every script, stylesheet and image the page (and its initializer) references is served by Pylon.

Usage: openapi_check.py BASE_URL
"""

import json
import re
import sys
import urllib.parse
import urllib.request

from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

BASE = sys.argv[1]


def get(path):
    with urllib.request.urlopen(BASE + path) as r:
        return r.status, r.read().decode("utf-8", "replace")


status, text = get("/openapi.json")
spec = json.loads(text)
assert spec["openapi"].startswith("3.1"), spec["openapi"]
validate(spec, cls=OpenAPIV31SpecValidator)
print(f"ok   /openapi.json is valid OpenAPI {spec['openapi']} ({len(spec['paths'])} paths)")

status, html = get("/docs/")
assert status == 200
refs = re.findall(r'(?:src|href)="([^"]+)"', html)
external = [r for r in refs if re.match(r"^(https?:)?//", r)]
assert not external, f"external assets: {external}"
for ref in refs:
    path = urllib.parse.urljoin("/docs/", ref)
    code, body = get(path)
    assert code == 200 and body, path
    if path.endswith("swagger-initializer.js"):
        assert "https://" not in body.replace("https://swagger.io", ""), "initializer loads from the network"
        assert "/openapi.json" in body, "initializer points at Pylon's own spec"
print(f"ok   /docs references {len(refs)} assets, all served by Pylon, none external")
print("openapi: 2 passed, 0 failed")

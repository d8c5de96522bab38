"""Mutated devices and campaign YAML: every file either loads or fails with the located error.

The hand-written corpora (tests/devices/test_registry.py, tests/campaign/test_campaign_config.py)
name each mistake; here the real example files are mutated at random (lines dropped, duplicated or
swapped, values replaced with other types, indentation broken, bytes flipped) and the loaders must
answer each with a result or a DeviceConfigError / CampaignConfigError naming file:line and field,
never another exception.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from devices.registry import DeviceConfigError, parse_fleet
from farm.campaign.config import CampaignConfigError, parse_campaign

pytestmark = pytest.mark.chaos
ROOT = Path(__file__).resolve().parents[2]
JUNK = ["", "~", "null", "-1", "0", "1e999", ".nan", "true", "[]", "{}", "[1, [2]]", "{a: {b: c}}", "'x'",
        "\"\\u0000\"", "!!binary aGk=", "&a x", "*a", "!!python/object:os.system x", "999999999999999999999",
        "../../etc/passwd", "x" * 300, "- a", "? a", "|\n  block", ": :"]
LOCATED = re.compile(r"^.+:\d+: .+: .+")


def mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        if not lines:
            break
        i = rng.randrange(len(lines))
        r = rng.random()
        if r < 0.25 and ":" in lines[i]:
            key, _, _ = lines[i].partition(":")
            lines[i] = f"{key}: {rng.choice(JUNK)}"
        elif r < 0.4:
            del lines[i]
        elif r < 0.5:
            lines.insert(i, lines[i])
        elif r < 0.6:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif r < 0.7:
            lines[i] = " " * rng.randint(1, 5) + lines[i]
        elif r < 0.8:
            lines[i] = lines[i].lstrip()
        elif r < 0.9:
            b = bytearray(lines[i].encode())
            if b:
                b[rng.randrange(len(b))] = rng.choice(b":-[]{}#&*!|>'\"%@`\t")
            lines[i] = b.decode(errors="replace")
        else:
            lines.insert(i, f"{rng.choice(['unknown_field', 'name', 'devices', 'workloads', 'timing'])}: "
                            f"{rng.choice(JUNK)}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("src", "parse", "error"), [
    ("configs/devices.yaml", parse_fleet, DeviceConfigError),
    ("configs/campaigns/quickstart.yaml", parse_campaign, CampaignConfigError),
])
def test_mutated_configs_fail_located_or_load(src: str, parse: object, error: type[Exception]) -> None:
    text = (ROOT / src).read_text()
    parse(text, src)  # type: ignore[operator]  # the original is valid
    rng = random.Random(src)
    refused = 0
    for n in range(600):
        bad = mutate(text, rng)
        try:
            parse(bad, src)  # type: ignore[operator]
        except error as e:
            refused += 1
            assert LOCATED.match(str(e)) and str(e).startswith(src), (n, str(e), bad)
            assert e.line >= 0 and e.field  # type: ignore[attr-defined]
        except Exception as e:  # noqa: BLE001 - the assertion names what escaped
            pytest.fail(f"mutation {n} raised {type(e).__name__}: {e}\n---\n{bad}")
    assert refused >= 100, refused

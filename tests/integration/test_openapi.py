"""The OpenAPI document is exact: Schemathesis generates requests from `/openapi.json` (its examples,
boundary values and random ones) against the real API (uvicorn on real SecantusDB), and every answer
must match what the document says: status codes, bodies, headers, content types, no 5xx, and schema-valid
requests accepted (tests/schemathesis.toml lists the documented refusals a schema cannot foresee)."""

import subprocess
import sys
from pathlib import Path

from pydantic import SecretStr

from tests.integration.test_web import serving

CONFIG = Path(__file__).resolve().parent.parent / "schemathesis.toml"


def test_every_answer_matches_the_openapi_document(settings) -> None:
    hooked = settings.model_copy(update={"webhook_secret": SecretStr("whsec-schema")})
    with serving(hooked) as url:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
             "--checks", "all", "--phases", "examples,coverage,fuzzing", "--max-examples", "30", "--seed", "22",
             "--request-timeout", "20", "--exclude-path-regex", "^/api/jobs/events$"],  # that stream never ends
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:]
    assert " passed" in run.stdout and "failed" not in run.stdout.split("SUMMARY")[-1]
